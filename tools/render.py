#!/usr/bin/env python3
"""Fills ${X402_*} placeholders of a config template from the environment.

Usage: render.py TEMPLATE > OUT. Fails, naming the variable, if one is unset, so a config
with a placeholder left in it never reaches Envoy.
"""
import os
import re
import sys

text = open(sys.argv[1]).read()
missing = sorted({m for m in re.findall(r"\$\{(X402_[A-Z0-9_]+)\}", text) if m not in os.environ})
if missing:
    sys.exit(f"render.py: {sys.argv[1]}: unset: {', '.join(missing)}")
sys.stdout.write(re.sub(r"\$\{(X402_[A-Z0-9_]+)\}", lambda m: os.environ[m.group(1)], text))
