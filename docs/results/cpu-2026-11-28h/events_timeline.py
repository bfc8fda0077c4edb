import sys, json
t0 = None
for l in sys.stdin:
    t, _, d = l.partition(" data:")
    t = float(t); t0 = t0 or t
    e = json.loads(d); k = e["kind"]
    if k == "progress": print("%7.1fs progress %s %d/%d" % (t - t0, e["stage"], e["done"], e["total"]))
    elif k == "metrics": print("%7.1fs step %d" % (t - t0, e["point"]["step"]))
    elif k == "status": print("%7.1fs status %s" % (t - t0, e["run"]["status"]))
