-- wrk script: POST the signed body given in the environment (BODY_FILE, SIGNATURE).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Line-Signature"] = os.getenv("SIGNATURE")
