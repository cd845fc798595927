"""A trivial KServe model (answers every v1 predict with an empty list): the floor of what KServe costs per
request on this machine. `--gate` serves it through plmrec's own model server (its HTTP front,
plmrec.serving.http: routes, the strict body parser, timeouts) to measure that front's cost alone.

  python bench/_trivial_model.py --port 8091 [--gate]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--gate", action="store_true")
    args = ap.parse_args()
    sys.argv = sys.argv[:1]  # kserve reads sys.argv when imported

    import kserve

    class Trivial(kserve.Model):
        def __init__(self):
            super().__init__("plmrec")
            self.ready = True

        def predict(self, payload, headers=None):
            return {"predictions": []}

    if args.gate:
        from plmrec.config import ServingParams
        from plmrec.serving.predictor import LocalModelServer

        LocalModelServer("127.0.0.1", args.port, ServingParams()).start([Trivial()])
    else:
        server = kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1, enable_latency_logging=False)
        server.start([Trivial()])


if __name__ == "__main__":
    main()
