"""Where the upstream NetworkPolicy cases are: ../shared when this checkout sits beside it, else our copy.

tests/conformance/data/netpol_cases.yaml is a verbatim copy of ../shared/conformance/netpol_cases.yaml
so that a checkout on its own (as CI has) still runs every case; test_cases_copy_is_current checks
that the copy has not drifted whenever the shared file is there.
"""

from __future__ import annotations

from pathlib import Path

SHARED_CASES = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "netpol_cases.yaml"
VENDORED_CASES = Path(__file__).resolve().parent / "data" / "netpol_cases.yaml"
CASES_FILE = SHARED_CASES if SHARED_CASES.exists() else VENDORED_CASES
