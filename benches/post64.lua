-- wrk script of bench_ingress: POST a fixed 64-byte body; at the end print one parseable result line.
--
-- The line is "MMBENCH key=value ...": requests, duration_us, the latency percentiles in microseconds and wrk's
-- error counters (errors_status counts HTTP responses >= 400). benches/_harness.py parses it.

wrk.method = "POST"
wrk.body = "micromono bench_ingress: a 64-byte body that the echo returns..."
wrk.headers["Content-Type"] = "application/octet-stream"

function done(summary, latency, requests)
  assert(#wrk.body == 64, "post64.lua: the body must be 64 bytes, it is " .. #wrk.body)
  local e = summary.errors
  io.write(string.format(
    "MMBENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
