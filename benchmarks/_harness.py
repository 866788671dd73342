"""Makes the test suite's harnesses (tests/harness/: the engine and the gateway run as
local processes) importable from a benchmark script: `import _harness` first."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
