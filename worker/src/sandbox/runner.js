// Toolsmith's sandbox runner: the only code in the Deno process besides the tool.
//
// Protocol (one JSON value per line):
//   stdin line 1   {"token": "...", "source": "...", "output_bytes": N}   load the tool
//   stdin line 2.. {"id": "...", "context": {...}}                       run it once each
//   stdout frames  "\n" + token + " " + JSON + "\n"
//     {"type":"ready"} after loading, {"type":"result", id, ...} per run,
//     {"type":"load_error", ...} when the tool cannot be loaded.
//
// The token arrives before any tool code exists and lives only in this module's scope, so
// nothing the tool prints can pass for a frame. Every primitive used to write frames is
// captured before the tool loads; the tool sees console, stdin, stdout and stderr as stubs.

const LOG_KEEP_BYTES = 64 * 1024;

const internal = Deno[Deno.internal];
const inspectArgs = internal?.inspectArgs?.bind(internal);
const inspect = Deno.inspect;
const stringify = JSON.stringify;
const parse = JSON.parse;
const encoder = new TextEncoder();
const encode = encoder.encode.bind(encoder);
const decoder = new TextDecoder();
const decode = decoder.decode.bind(decoder);
const stdout = Deno.stdout;
const writeSync = stdout.writeSync.bind(stdout);
const stdin = Deno.stdin;
const read = stdin.read.bind(stdin);
const createObjectURL = URL.createObjectURL;
const realSetTimeout = globalThis.setTimeout;
const realSetInterval = globalThis.setInterval;
const realClearTimeout = globalThis.clearTimeout;
const realClearInterval = globalThis.clearInterval;
const exit = Deno.exit;
const ArrayIsArray = Array.isArray;
const StringCtor = String;
const ErrorCtor = Error;
const ObjectDefineProperty = Object.defineProperty;

let token = "";
let outputBytes = 1 << 20;

// ---- frames -------------------------------------------------------------------------

function writeAll(bytes) {
  let offset = 0;
  while (offset < bytes.length) {
    offset += writeSync(bytes.subarray(offset));
  }
}

function frame(value) {
  writeAll(encode("\n" + token + " " + stringify(value) + "\n"));
}

// ---- stdin lines ----------------------------------------------------------------------

let pending = "";
const chunk = new Uint8Array(64 * 1024);

async function readLine() {
  for (;;) {
    const newline = pending.indexOf("\n");
    if (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      return line;
    }
    const n = await read(chunk);
    if (n === null) {
      if (pending.length > 0) {
        const line = pending;
        pending = "";
        return line;
      }
      return null;
    }
    pending += decode(chunk.subarray(0, n), { stream: true });
  }
}

// ---- console capture ------------------------------------------------------------------

let logs = [];
let logKept = 0;
let logTotal = 0;
let logsTruncated = false;

function format(args) {
  if (inspectArgs) {
    try {
      return inspectArgs(args, { colors: false });
    } catch {
      // fall through to the simple form
    }
  }
  let out = "";
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    out += (i ? " " : "") + (typeof a === "string" ? a : inspect(a, { colors: false }));
  }
  return out;
}

// Thrown into the tool once its console output passes the output limit, so a flooding
// loop stops at once instead of running into the wall clock.
class OutputLimitError extends ErrorCtor {}

function capture(level, text) {
  const size = text.length + 1;
  logTotal += size;
  if (logKept + size <= LOG_KEEP_BYTES) {
    logKept += size;
    logs.push({ level, text });
  } else {
    logsTruncated = true;
  }
  if (logTotal > outputBytes) {
    throw new OutputLimitError(`the tool wrote more than ${outputBytes} bytes of console output`);
  }
}

function logger(level) {
  return (...args) => capture(level, format(args));
}

const consoleStub = {
  log: logger("log"),
  info: logger("info"),
  debug: logger("debug"),
  warn: logger("warn"),
  error: logger("error"),
  trace: logger("trace"),
  dir: (value) => capture("log", inspect(value, { colors: false })),
  table: (value) => capture("log", inspect(value, { colors: false })),
  assert: (condition, ...args) => {
    if (!condition) capture("error", "Assertion failed" + (args.length ? ": " + format(args) : ""));
  },
  group: logger("log"),
  groupCollapsed: logger("log"),
  groupEnd: () => {},
  time: () => {},
  timeEnd: () => {},
  timeLog: logger("log"),
  count: logger("log"),
  countReset: () => {},
  clear: () => {},
};

function streamStub(level) {
  const write = (bytes) => {
    const text = typeof bytes === "string" ? bytes : decode(bytes);
    capture(level, text.endsWith("\n") ? text.slice(0, -1) : text);
    return bytes.length;
  };
  return {
    write: async (bytes) => write(bytes),
    writeSync: write,
    isTerminal: () => false,
    close: () => {},
    get writable() {
      return new WritableStream({ write: (bytes) => void write(bytes) });
    },
  };
}

function hide(target, name, value) {
  try {
    ObjectDefineProperty(target, name, { value, writable: false, configurable: false });
  } catch {
    // Not configurable on this Deno: leave it.
  }
}

hide(globalThis, "console", consoleStub);
hide(Deno, "stdout", streamStub("log"));
hide(Deno, "stderr", streamStub("error"));
hide(Deno, "stdin", undefined);
hide(Deno, "exit", () => {
  throw new ErrorCtor("Deno.exit() is not available to tools; return a value instead");
});
// Storage that Deno keeps on disk must not outlive the run.
hide(globalThis, "localStorage", undefined);
hide(globalThis, "caches", undefined);
// No GPU: the worker also starts Deno with no WebGPU backend.
hide(Navigator.prototype, "gpu", undefined);

globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  capture("error", "Unhandled promise rejection: " + describe(event.reason));
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  capture("error", "Uncaught error: " + describe(event.error ?? event.message));
});

// ---- timers: a run ends when its function returns --------------------------------------

const timers = new Set();
globalThis.setTimeout = (fn, ms, ...args) => {
  const id = realSetTimeout((...a) => {
    timers.delete(id);
    if (typeof fn === "function") fn(...a);
  }, ms, ...args);
  timers.add(id);
  return id;
};
globalThis.setInterval = (fn, ms, ...args) => {
  const id = realSetInterval(fn, ms, ...args);
  timers.add(id);
  return id;
};
globalThis.clearTimeout = (id) => {
  timers.delete(id);
  realClearTimeout(id);
};
globalThis.clearInterval = (id) => {
  timers.delete(id);
  realClearInterval(id);
};

function clearTimers() {
  for (const id of timers) {
    realClearTimeout(id);
    realClearInterval(id);
  }
  timers.clear();
}

// ---- errors -------------------------------------------------------------------------

function describe(value) {
  if (value instanceof ErrorCtor) {
    return (value.name ?? "Error") + ": " + value.message;
  }
  try {
    return typeof value === "string" ? value : inspect(value, { colors: false });
  } catch {
    return StringCtor(value);
  }
}

function permissionMessage(error) {
  // fetch wraps a denied connection: TypeError("fetch failed") whose cause's message holds
  // "… client error (Connect): Requires net access to …".
  for (let e = error, depth = 0; e && depth < 5; e = e.cause, depth++) {
    const message = typeof e?.message === "string" ? e.message : "";
    const at = message.search(/Requires \w+ access/);
    if (e?.name === "NotCapable" || at >= 0) {
      return message.slice(Math.max(at, 0)).replace(/, run again with the --allow-\w+ flag/, "");
    }
    // The worker's seccomp filter refuses IPv6 and raw sockets with EPERM.
    const refused = message.search(/Operation not permitted \(os error 1\)/);
    if (e?.name === "PermissionDenied" || refused >= 0) {
      const detail = refused >= 0 ? message.slice(refused) : message;
      return detail + " (the sandbox refused it; network access is to public IPv4 addresses only)";
    }
  }
  return null;
}

function position(error, moduleUrl) {
  const texts = [];
  if (typeof error?.stack === "string") texts.push(error.stack);
  if (typeof error?.message === "string") texts.push(error.message);
  for (const text of texts) {
    const at = text.indexOf(moduleUrl + ":");
    if (at >= 0) {
      const match = /^:(\d+):(\d+)/.exec(text.slice(at + moduleUrl.length));
      if (match) return { line: Number(match[1]), column: Number(match[2]) };
    }
  }
  return {};
}

function classify(error, moduleUrl, phase) {
  if (error instanceof OutputLimitError) {
    return { kind: "output_limit", message: error.message };
  }
  const denied = permissionMessage(error);
  if (denied !== null) {
    return { kind: "permission_denied", message: denied, ...position(error, moduleUrl) };
  }
  const isSyntax =
    error?.name === "SyntaxError" ||
    (typeof error?.message === "string" && error.message.startsWith("SyntaxError:"));
  let message;
  if (error instanceof ErrorCtor || (error && typeof error.message === "string")) {
    // Deno appends a code frame of the wrapped source to syntax errors; keep the first line.
    const first = StringCtor(error.message).split("\n")[0].replace(/^SyntaxError: /, "");
    message = (isSyntax ? "SyntaxError" : (error.name ?? "Error")) + ": " + first;
  } else {
    message = "Uncaught " + describe(error);
  }
  const kind = isSyntax && phase === "load" ? "compile_error" : "runtime_error";
  return { kind, message, ...position(error, moduleUrl) };
}

// ---- main -------------------------------------------------------------------------------

function serialize(value) {
  if (value === undefined) return "null";
  try {
    const text = stringify(value);
    return text === undefined ? "null" : text;
  } catch (error) {
    throw new ErrorCtor("the return value is not JSON-serializable: " + describe(error));
  }
}

function byteLength(text) {
  // UTF-16 length bounds the UTF-8 length from below and a third of it from above.
  return text.length * 3 <= outputBytes ? text.length : encode(text).length;
}

function resetLogs() {
  logs = [];
  logKept = 0;
  logTotal = 0;
  logsTruncated = false;
}

async function runOnce(fn, request, moduleUrl) {
  const started = performance.now();
  // Keeps the event loop alive while the tool's promise is pending, so a promise that never
  // settles runs into the wall-clock limit like any other run that does not finish.
  const keepAlive = realSetInterval(() => {}, 1 << 30);
  let value = null;
  let error = null;
  try {
    const text = serialize(await fn(request.context));
    const size = byteLength(text) + logTotal;
    if (size > outputBytes) {
      error = {
        kind: "output_limit",
        message: `the result and console output come to ${size} bytes; the limit is ${outputBytes}`,
      };
    } else {
      value = text;
    }
  } catch (thrown) {
    error = classify(thrown, moduleUrl, "run");
  }
  clearTimers();
  realClearInterval(keepAlive);
  if (logTotal > outputBytes) {
    value = null;
    error = {
      kind: "output_limit",
      message: `the tool wrote ${logTotal} bytes of console output; the limit is ${outputBytes}`,
    };
  }
  // The value is already JSON text: splice it in rather than parse and print it again.
  const head = '{"type":"result","id":' + stringify(request.id) +
    ',"duration_ms":' + stringify(performance.now() - started) +
    ',"logs":' + stringify(logs) + ',"logs_truncated":' + stringify(logsTruncated);
  const body = error === null ? ',"ok":true,"value":' + value + "}" : ',"ok":false,"error":' + stringify(error) + "}";
  writeAll(encode("\n" + token + " " + head + body + "\n"));
  resetLogs();
}

async function main() {
  const first = await readLine();
  if (first === null) return;
  const init = parse(first);
  token = init.token;
  outputBytes = init.output_bytes ?? outputBytes;
  const moduleUrl = createObjectURL(new Blob([init.source], { type: "application/typescript" }));
  let fn;
  try {
    const mod = await import(moduleUrl);
    fn = mod.default;
    if (typeof fn !== "function") {
      frame({
        type: "load_error",
        error: {
          kind: "compile_error",
          message: "the module's default export is not a function; export default async function (context) { … }",
        },
      });
      return;
    }
  } catch (error) {
    frame({ type: "load_error", error: classify(error, moduleUrl, "load"), logs, logs_truncated: logsTruncated });
    return;
  }
  frame({ type: "ready" });
  for (;;) {
    const line = await readLine();
    if (line === null) break;
    if (line.length === 0) continue;
    await runOnce(fn, parse(line), moduleUrl);
  }
  exit(0);
}

await main();
exit(0);
