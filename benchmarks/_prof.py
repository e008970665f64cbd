import _common as c, time, sys, subprocess
from pathlib import Path
rate=int(sys.argv[1]); secs=float(sys.argv[2]); outp=sys.argv[3]
with c.Nginx() as n, c.scratch_dir('bt-') as d:
    cap = c.write_capture(d/'cap.jsonl', int(rate*secs), rate)
    sc = c.write_scenario(d/'s.yaml', cap, n.urls[0], n.urls[1])
    cmd=['/tmp/spyvenv/bin/py-spy','record','-r','250','--gil','--threads','-f','raw','-o',outp,'--',*c.HARNESS,'run',str(sc),'--speed','1','--out',str(d/'out')]
    p=subprocess.run(cmd, capture_output=True, text=True, cwd=c.ROOT)
    print(p.stdout[-3000:], p.stderr[-2000:])
