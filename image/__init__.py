"""The appliance image: its build driver (build.py) and the files it installs (rootfs/)."""
