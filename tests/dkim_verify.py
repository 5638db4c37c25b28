#!/usr/bin/env python3
"""Verifies every DKIM signature of each message file with dkimpy, an implementation
independent of sunset's, answering its key lookups from `sunset dkim-record` lines (no DNS).

Usage: dkim_verify.py RECORDS_FILE MESSAGE_FILE...
Prints one line per signature: `<file> <a=> <s=> ok|FAIL`. Exits 0 when every message has a
signature and every signature verifies, 1 otherwise.
"""
import re
import sys

import dkim


def read_records(path):
    """`<name>. IN TXT ( "…" "…" )` lines, as name -> the strings joined."""
    records = {}
    with open(path, encoding="ascii") as lines:
        for line in lines:
            match = re.match(r"^(\S+?)\.? IN TXT \( (.*) \)$", line.strip())
            if match:
                text = "".join(re.findall(r'"([^"]*)"', match.group(2)))
                records[match.group(1).lower()] = text.encode("ascii")
    return records


def tag(signature, name):
    match = re.search(rb"(?:^|;)\s*" + name + rb"=([^;]*)", signature)
    return match.group(1).strip().decode("ascii") if match else "-"


def main():
    records = read_records(sys.argv[1])

    def dnsfunc(name, timeout=5):
        return records.get(name.decode("ascii").rstrip(".").lower())

    every_one_verifies = True
    for path in sys.argv[2:]:
        with open(path, "rb") as file:
            message = file.read()
        checker = dkim.DKIM(message)
        signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
        if not signatures:
            print(f"{path} - - FAIL (no signature)")
            every_one_verifies = False
        for index, signature in enumerate(signatures):
            try:
                verified = checker.verify(idx=index, dnsfunc=dnsfunc)
            except dkim.DKIMException as error:
                print(f"{path}: {error}", file=sys.stderr)
                verified = False
            result = "ok" if verified else "FAIL"
            print(f"{path} {tag(signature, b'a')} {tag(signature, b's')} {result}")
            every_one_verifies = every_one_verifies and verified
    sys.exit(0 if every_one_verifies else 1)


if __name__ == "__main__":
    main()
