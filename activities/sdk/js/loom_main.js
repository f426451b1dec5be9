// The component's entry point, generated around a handler module by `loom activity build`:
// `run(input)` parses the JSON input, calls the handler's `run`, serialises its result and
// turns exceptions into the world's `error` record (thrown as { payload }).
import { ActivityError } from "./loom.js";
import * as handler from "./__LOOM_HANDLER_MODULE__";

const MESSAGE_CHARS = 2000;
const STACK_CHARS = 4000;

function failure(code, message, retryable, details) {
  return {
    payload: {
      code,
      message: String(message).slice(0, MESSAGE_CHARS),
      retryable: Boolean(retryable),
      details: details === undefined ? undefined : JSON.stringify(details),
    },
  };
}

export function run(input) {
  if (typeof handler.run !== "function") {
    throw failure("guest_error", "the activity module exports no run() function", false);
  }
  let result;
  try {
    result = handler.run(JSON.parse(input));
  } catch (e) {
    if (e instanceof ActivityError) {
      throw failure(e.code, e.message, e.retryable, e.details);
    }
    // SpiderMonkey's interpreter keeps its frames on the heap: deep recursion usually ends
    // as "out of memory" (thrown as a bare string), sometimes as "too much recursion".
    const text = String(e instanceof Error ? e.message : e);
    if (/too much recursion|call stack size/i.test(text)) {
      throw failure("stack_overflow", text, false, { type: "InternalError" });
    }
    if (/out of memory/i.test(text)) {
      throw failure("memory_limit", text, false, { type: "OutOfMemory" });
    }
    const type = (e && e.constructor && e.constructor.name) || typeof e;
    const stack = String((e && e.stack) || ""); // SpiderMonkey's stack: frames only
    throw failure("guest_error", e instanceof Error ? e.message : String(e), false,
                  { type, traceback: stack.length > STACK_CHARS ? "..." + stack.slice(-STACK_CHARS) : stack });
  }
  const text = JSON.stringify(result);
  if (text === undefined) {
    throw failure("guest_error", "run() returned a value JSON cannot represent", false,
                  { type: "TypeError" });
  }
  return text;
}
