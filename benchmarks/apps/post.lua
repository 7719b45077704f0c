-- wrk script: POST a JSON body; KEY set in the environment adds a fixed Idempotency-Key.
wrk.method = "POST"
wrk.body = '{"name": "bench"}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key then wrk.headers["Idempotency-Key"] = key end
