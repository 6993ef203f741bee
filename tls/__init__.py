"""TLS policy and certificates for every listener of the appliance."""
