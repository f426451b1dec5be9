"""python -m runtime.demo: the activity tour, then the durable order actor."""

from runtime.demo import activities, orders

if __name__ == "__main__":
    code = activities.main()
    if code == 0:
        code = orders.main()
    raise SystemExit(code)
