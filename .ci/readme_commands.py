"""Print the README's two commands as CI runs them: the install part of the first line (before ``&&``) and the test
command (the second line) of the README's first ``bash`` block, one per line."""
import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parents[1] / "README.md"
block = re.search(r"^```bash\n(.*?)^```", readme.read_text(encoding="utf-8"), re.S | re.M)
if block is None:
    sys.exit(f"{readme} has no ```bash block")
lines = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
if len(lines) != 2 or "&&" not in lines[0]:
    sys.exit(f"{readme}: the first bash block must hold two commands, 'INSTALL && RUN' and 'TEST'; got {lines}")
print(lines[0].split("&&")[0].strip())
print(lines[1])
