import _common as c, time, sys
from pathlib import Path
rate=int(sys.argv[1]); procs=sys.argv[2] if len(sys.argv)>2 and sys.argv[2]!='0' else None
secs=float(sys.argv[3]) if len(sys.argv)>3 else 5
with c.Nginx() as n, c.scratch_dir('bt-') as d:
    cap = c.write_capture(d/'cap.jsonl', int(rate*secs), rate)
    sc = c.write_scenario(d/'s.yaml', cap, n.urls[0], n.urls[1])
    args=['run', str(sc), '--speed', '1'] + (['--processes', procs] if procs else [])
    r = c.run_harness(args, out=d/'out', timeout_s=120)
    print(r.rc, r.wall_s, r.output)
    print(c.query(r.run_dir, 'select count(*), quantile_cont(send_lag_ms, 0.5), quantile_cont(send_lag_ms, 0.99), max(send_lag_ms) from legs'))
    for row in c.query(r.run_dir, "with t as (select *, epoch(intended_at) - min(epoch(intended_at)) over () as t from legs) select floor(t*4)/4 as b, count(*), round(quantile_cont(send_lag_ms,0.5),2), round(quantile_cont(send_lag_ms,0.99),2), round(max(send_lag_ms),2), round(quantile_cont(service_ms,0.5),2) from t group by 1 order by 1"): print(row)
