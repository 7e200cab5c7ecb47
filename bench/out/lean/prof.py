import sys, time
sys.path.insert(0, '/work/wt-lean/bench')
import peer_compare as P, hydra_peer as H
from pyinstrument import Profiler
case, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
frames = P.load_frames(case)
engine, clock, _ = H.build(frames)
p = Profiler(interval=0.0005); p.start()
t = time.process_time(); H.run(engine, clock, n); cpu = time.process_time() - t
p.stop()
open(out, 'w').write(p.output_text(unicode=False, color=False, show_all=False))
print(case, n, 'cpu', round(cpu, 2))
