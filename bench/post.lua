-- wrk script: POST unique, pre-signed webhook bodies.
--   BODIES: a file of "signature<TAB>body" lines (bench/throughput.py writes it)
--   PATH:   the request path
--   DELAY_MS (optional): pause after each answer on a connection, to pace the rate
-- Every request carries a different body: the relay answers an identical
-- body and signature as a retry, without storing it, which would flatter it.
local bodies, sigs = {}, {}
local path = os.getenv("PATH_TO_POST")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")

function init(args)
  for line in io.lines(os.getenv("BODIES")) do
    local tab = string.find(line, "\t", 1, true)
    sigs[#sigs + 1] = string.sub(line, 1, tab - 1)
    bodies[#bodies + 1] = string.sub(line, tab + 1)
  end
end

local n = 0
function request()
  n = n + 1
  local i = (n - 1) % #bodies + 1  -- run wrk with -t1: one Lua state, one counter
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["X-Line-Signature"] = sigs[i],
  }, bodies[i])
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end
