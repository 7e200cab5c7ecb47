import sys, cProfile, pstats, os, io
sys.path.insert(0, "bench")
import hydra_peer as H
from hydra_engine.data.bars import read_frame_file
case, out = sys.argv[1], sys.argv[2]
if case.startswith("multi"):
    d=f"/tmp/benchpeers/data/{case}"; frames={f"INST{k:02d}": read_frame_file(f"{d}/{f}") for k,f in enumerate(sorted(os.listdir(d)))}
else:
    frames = {"SYN": read_frame_file(f"/tmp/benchpeers/data/{case}.parquet")}
pr = cProfile.Profile(); pr.enable()
engine, clock, _ = H.build(frames)
visited=[0]; adv=engine.advance
def a(now): visited[0]+=1; adv(now)
engine.advance=a
H.run(engine, clock)
pr.disable()
s = io.StringIO()
s.write(f"{case}: visited {visited[0]} of {len(clock.ticks)} ticks, {H.results(engine)}\n")
p = pstats.Stats(pr, stream=s); p.sort_stats("cumulative").print_stats(60); p.sort_stats("tottime").print_stats(40)
open(out, "w").write(s.getvalue().replace(os.getcwd() + "/", ""))
