"""Scrapes a Prometheus endpoint with urllib and parses it with prometheus_client's own text parser.

Prints JSON: {family: {"type": ..., "samples": [[sample name, {labels}, value], ...]}}. A malformed
exposition makes the parser raise, and this script exit non-zero with the parser's message.
"""

import json
import math
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    if not content_type.startswith("text/plain"):
        sys.exit(f"unexpected Content-Type {content_type!r}")
    out = {}
    for family in text_string_to_metric_families(text):
        samples = []
        for s in family.samples:
            value = s.value
            if math.isinf(value):
                value = "+Inf" if value > 0 else "-Inf"
            labels = dict(s.labels)
            samples.append([s.name, labels, value])
        out[family.name] = {"type": family.type, "samples": samples}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
