import _common as c, time, sys
from pathlib import Path
rate=int(sys.argv[1]); procs=sys.argv[2] if len(sys.argv)>2 else None
with c.Nginx() as n, c.scratch_dir('bt-') as d:
    print('wrk', c.wrk_rps(n.urls[0]+'/score', duration_s=3))
    print('locust', c.locust_fast_rps(n.urls[0], duration_s=5))
    cap = c.write_capture(d/'cap.jsonl', rate*5, rate)
    sc = c.write_scenario(d/'s.yaml', cap, n.urls[0], n.urls[1])
    args=['run', str(sc), '--speed', '1'] + (['--processes', procs] if procs else [])
    r = c.run_harness(args, out=d/'out', timeout_s=120)
    print(r.rc, r.wall_s, r.output)
    print(c.query(r.run_dir, 'select count(*), quantile_cont(send_lag_ms, 0.5), quantile_cont(send_lag_ms, 0.99), max(send_lag_ms) from legs'))
    print(c.query(r.run_dir, 'select error_kind, error_detail, count(*) from legs group by all'))
