// Conformance and abuse guest (component-v1, JavaScript): `op` picks what it does.
let count = 0;

function recurse(n) {
  return recurse(n + 1) + 1;
}

export function run(req) {
  switch (req.op) {
    case "echo":
      return req;
    case "loop":
      for (;;) {}
    case "grow": {
      const chunks = [];
      for (;;) chunks.push(new Uint8Array(1 << 20).fill(1));
    }
    case "recurse":
      return { n: recurse(0) };
    case "fetch":
      return { status: fetch(req.url) };
    case "time":
      return { time: Date.now(), performance: performance.now() };
    case "random": {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      return { random: Math.random(), bytes: Array.from(bytes) };
    }
    case "raise":
      throw new Error("x".repeat(req.size ?? 100000));
    case "output":
      return { data: "x".repeat(req.size) };
    case "fail":
      throw new loom.ActivityError("busy, try again", { code: "busy", retryable: true });
    case "secret":
      return { value: loom.secret(req.name) };
    case "env":
      return { value: loom.env(req.name) };
    case "log":
      loom.log("hello from js", { level: "info", n: 1 });
      return {};
    case "key":
      return { key: loom.idempotencyKey() };
    case "http": {
      // the host's answer; ok:false (network, its deadline) is a typed error
      const answer = loom.http(req.method ?? "GET", req.url,
                               { headers: req.headers, body: req.body });
      if (!answer.ok) {
        throw new loom.ActivityError(answer.error.message,
                                     { code: answer.error.code, retryable: true });
      }
      return { status: answer.status, body: answer.body };
    }
    case "counter":
      count += 1;
      return { count };
    default:
      throw new loom.ActivityError(`unknown op ${req.op}`, { code: "bad_op" });
  }
}
