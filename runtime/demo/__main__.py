"""python -m runtime.demo: the activity tour, then the durable order actor."""

from runtime.demo import activities, orders, reset

if __name__ == "__main__":
    reset()
    code = activities.main()
    if code == 0:
        code = orders.main()
    raise SystemExit(code)
