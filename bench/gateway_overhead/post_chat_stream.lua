-- wrk: POST a small streaming chat completion (the answer is a 32-event SSE stream).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":30,"stream":true}'
