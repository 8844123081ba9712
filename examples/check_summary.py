"""A `cmd` task: check the reduced statistics against what the generator was asked for."""

import sys

import plasma.task

ctx = plasma.task.current()
rows, mean, std, _, _ = ctx.input("summary")
ok = rows == 2_000_000 and abs(mean - 10.0) < 0.01 and abs(std - 2.0) < 0.01
verdict = "passed" if ok else "FAILED"
print(f"summary check {verdict}: {int(rows)} rows, mean {mean:.3f}, std {std:.3f}")
ctx.close()
sys.exit(0 if ok else 1)
