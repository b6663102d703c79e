#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite fuzzingclient report.

Reads REPORT_DIR/index.json (written by `wstest -m fuzzingclient`) and
  (a) prints the number of cases per behavior and per closing behavior,
  (b) writes a golden-style JSON file {case: {behavior, behaviorClose}},
      sorted by case number, durations and other run-dependent data stripped,
  (c) lists failing cases (with the case description from the per-case
      report) and exits non-zero if any case of groups 1-10, 12 or 13 failed.
      A case fails if its behavior is not OK / NON-STRICT / INFORMATIONAL,
      or if its closing behavior is FAILED or UNCLEAN.
With --check EXPECTED it also diffs the results against a golden file.

Exit status: 0 all good; bit 1 = failing cases; bit 2 = differs from --check
file; 3 = both; 4 = unusable report.
"""
import argparse
import collections
import json
import os
import sys

PASS_BEHAVIORS = {"OK", "NON-STRICT", "INFORMATIONAL"}
FAIL_CLOSE_BEHAVIORS = {"FAILED", "UNCLEAN"}
# groups 1-10 (the protocol) and 12-13 (permessage-deflate) must pass; 11 does not exist
GATED_GROUPS = set(range(1, 11)) | {12, 13}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def load_report(report_dir, agent):
    path = os.path.join(report_dir, "index.json")
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("summarize: cannot read %s: %s" % (path, e), file=sys.stderr)
        sys.exit(4)
    if not index:
        print("summarize: %s has no agents" % path, file=sys.stderr)
        sys.exit(4)
    if agent is None:
        if len(index) != 1:
            print("summarize: several agents in report, pass --agent: %s" % sorted(index),
                  file=sys.stderr)
            sys.exit(4)
        agent = next(iter(index))
    if agent not in index:
        print("summarize: agent %r not in report (have %s)" % (agent, sorted(index)),
              file=sys.stderr)
        sys.exit(4)
    return agent, index[agent]


def case_details(report_dir, entry):
    """Description etc. from the per-case JSON report (best effort)."""
    name = entry.get("reportfile")
    if not name:
        return {}
    try:
        with open(os.path.join(report_dir, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def shorten(text, limit):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("{\n")
        items = list(data.items())
        for i, (k, v) in enumerate(items):
            f.write("  %s: %s%s\n" % (json.dumps(k), json.dumps(v, sort_keys=True),
                                      "," if i + 1 < len(items) else ""))
        f.write("}\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", help="directory holding index.json")
    ap.add_argument("--agent", help="agent name in the report (default: the only one)")
    ap.add_argument("--golden", help="write case -> behavior/behaviorClose JSON here")
    ap.add_argument("--check", help="golden file to compare the results against")
    ap.add_argument("--details", type=int, default=60,
                    help="print at most this many failing cases in detail (default 60)")
    args = ap.parse_args()

    agent, cases = load_report(args.report_dir, args.agent)
    ids = sorted(cases, key=case_key)
    results = collections.OrderedDict(
        (cid, {"behavior": cases[cid]["behavior"],
               "behaviorClose": cases[cid]["behaviorClose"]}) for cid in ids)

    beh = collections.Counter(r["behavior"] for r in results.values())
    close = collections.Counter(r["behaviorClose"] for r in results.values())
    print("Autobahn results for agent %r: %d cases" % (agent, len(ids)))
    print("  behavior:      " + ", ".join("%s=%d" % kv for kv in sorted(beh.items())))
    print("  behaviorClose: " + ", ".join("%s=%d" % kv for kv in sorted(close.items())))

    failing = [cid for cid in ids
               if case_key(cid)[0] in GATED_GROUPS
               and (results[cid]["behavior"] not in PASS_BEHAVIORS
                    or results[cid]["behaviorClose"] in FAIL_CLOSE_BEHAVIORS)]

    status = 0
    if failing:
        status |= 1
        print("FAILING cases (groups 1-10, 12, 13): %d: %s" % (len(failing), " ".join(failing)))
        for cid in failing[: args.details]:
            entry = cases[cid]
            d = case_details(args.report_dir, entry)
            reason = d.get("remoteCloseReason")
            print("  %s  behavior=%s close=%s remoteCloseCode=%s%s" % (
                cid, entry["behavior"], entry["behaviorClose"], entry.get("remoteCloseCode"),
                " remoteCloseReason=%s" % json.dumps(reason) if reason else ""))
            if d.get("description"):
                print("      description: " + shorten(d["description"], 300))
            if d.get("expectation"):
                print("      expectation: " + shorten(d["expectation"], 300))
            if d.get("result"):
                print("      result:      " + shorten(d["result"], 300))
            if d.get("resultClose"):
                print("      close:       " + shorten(d["resultClose"], 300))
        if len(failing) > args.details:
            print("  ... %d more (see %s/index.html)" % (len(failing) - args.details,
                                                          args.report_dir))
    else:
        print("All cases of groups 1-10, 12 and 13 are OK / NON-STRICT / INFORMATIONAL.")

    if args.golden:
        write_json(args.golden, results)
        print("Wrote %s" % args.golden)

    if args.check:
        try:
            with open(args.check) as f:
                expected = json.load(f)
        except (OSError, ValueError) as e:
            print("summarize: cannot read golden file %s: %s" % (args.check, e), file=sys.stderr)
            return status | 2
        diffs = []
        for cid in sorted(set(expected) | set(results), key=case_key):
            exp, got = expected.get(cid), results.get(cid)
            if exp != got:
                diffs.append("  %s: expected %s, got %s" % (
                    cid, json.dumps(exp, sort_keys=True), json.dumps(got, sort_keys=True)))
        if diffs:
            status |= 2
            print("DIFFERS from %s in %d case(s):" % (args.check, len(diffs)))
            print("\n".join(diffs))
        else:
            print("Matches %s." % args.check)
    return status


if __name__ == "__main__":
    sys.exit(main())
