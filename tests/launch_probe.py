"""A stand-in peer for the launcher test: process 1 fails at once, the others hang."""
import sys
import time

if __name__ == "__main__":
  if "--process_id=1" in sys.argv:
    print("probe: process 1 fails", file=sys.stderr)
    sys.exit(3)
  time.sleep(120)
