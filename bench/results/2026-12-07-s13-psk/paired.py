import json, statistics, sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
paths=sorted({r["path"] for r in rows if r["path"].startswith("tunnel")})
old=[p for p in paths if p.endswith("@old")][0]; new=[p for p in paths if p.endswith("@new")][0]
def get(p,t,k,rep):
    for r in rows:
        if r["path"]==p and r["test"]==t and r["rep"]==rep: return r.get(k)
reps=sorted({r["rep"] for r in rows})
for t,k in [("tput1","gbit_s"),("tput1","agents_cpu_s_per_gb"),("rr","req_s"),("conn","req_s")]:
    o=[get(old,t,k,x) for x in reps]; n=[get(new,t,k,x) for x in reps]
    ratios=[b/a for a,b in zip(o,n)]
    print(f"{t}.{k}: old {['%.2f'%v for v in o]} new {['%.2f'%v for v in n]} new/old per rep {['%.2f'%v for v in ratios]} median {statistics.median(ratios):.2f}")
