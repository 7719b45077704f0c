-- wrk script: POST to $TARGET (default /durable) with a fresh Idempotency-Key each time.
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

local target = os.getenv("TARGET") or "/durable"
local counter = 0
local run = tostring(os.time()) .. tostring(os.clock())
wrk.method = "POST"
wrk.body = '{"name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = run .. "-" .. tostring(tid) .. "-" .. counter
  return wrk.format(nil, target)
end
