"""The lab: devices of a lab inventory (inventory.py) flashed or deployed, verified and
benchmarked (run.py, bench.py, measure.py), reported (report.py); the builds as Vagrant
boxes (vagrant.py)."""
