import sys, os, time
sys.path.insert(0, "bench")
import hydra_peer as H
from hydra_engine.data.bars import read_frame_file
case = sys.argv[1]
if case.startswith("multi"):
    d=f"/tmp/benchpeers/data/{case}"; frames={f"INST{k:02d}": read_frame_file(f"{d}/{f}") for k,f in enumerate(sorted(os.listdir(d)))}
else:
    frames = {"SYN": read_frame_file(f"/tmp/benchpeers/data/{case}.parquet")}
engine, clock, _ = H.build(frames)
visited=[0]; adv=engine.advance
def a(now): visited[0]+=1; adv(now)
engine.advance=a
H.run(engine, clock)
print(case, "visited", visited[0], "of", len(clock.ticks), H.results(engine))
