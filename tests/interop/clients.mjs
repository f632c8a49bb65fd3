// The Node SSE clients of the interoperability suite, each used the way its README shows.
// stdin: [{key, client, url, headers?}]; stdout: {key: result}, result = {status, events, error, connects}.
// A client reads until the gateway's `end` or `error` event, a refused connection, or 40 s.
import { EventSource } from "eventsource";
import { createParser } from "eventsource-parser";

// fetch-event-source is written for browsers: it needs `window` (timers, fetch) and `document`
// (it pauses while the page is hidden). This is the whole shim.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { fetchEventSource } = await import("@microsoft/fetch-event-source");

const DEADLINE_MS = 40000;
const terminal = (e) => (e.event === "end" || e.event === "error") && e.data !== "";

function withDeadline(run) {
  return new Promise((resolve) => {
    const out = { status: null, events: [], error: null, connects: 0 };
    const timer = setTimeout(() => { out.error = out.error || "timeout"; finish(); }, DEADLINE_MS);
    let done = false;
    const cleanups = [];
    function finish() {
      if (done) return;
      done = true;
      clearTimeout(timer);
      for (const c of cleanups) c();
      resolve(out);
    }
    run(out, finish, (c) => cleanups.push(c));
  });
}

// npm `eventsource`: the WHATWG EventSource. Reconnects and sends Last-Event-ID by itself.
function viaEventSource(job) {
  return withDeadline((out, finish, onCleanup) => {
    const es = new EventSource(job.url, job.headers ? {
      fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...job.headers } }),
    } : undefined);
    onCleanup(() => es.close());
    es.onopen = () => { out.connects += 1; };
    const names = job.names;
    for (const name of names) {
      es.addEventListener(name, (e) => {
        if (e.data === undefined) return;  // EventSource's own `error` (the connection), not the gateway's
        out.events.push({ event: e.type, data: e.data, id: e.lastEventId });
        if (terminal({ event: e.type, data: e.data })) finish();
      });
    }
    es.onmessage = (e) => { out.events.push({ event: "message", data: e.data, id: e.lastEventId }); };
    es.onerror = (e) => {
      if (e.code) out.status = e.code;  // eventsource >= 3: the status of a refused response
      if (es.readyState === EventSource.CLOSED) { out.error = out.error || `closed: ${e.message || ""}`; finish(); }
    };
  });
}

class Retriable extends Error {}
class Fatal extends Error {}

// @microsoft/fetch-event-source, with its README's onopen/onclose/onerror pattern: retry when the
// connection ends early, stop on a refused response. It takes an `id:` line as the last event id
// as soon as it reads it, before the event is dispatched; docs/user-guide/clients.md gives the
// workaround used here (unless job.plain): resend the id of the last event actually received.
function viaFetchEventSource(job) {
  return withDeadline((out, finish, onCleanup) => {
    const ctrl = new AbortController();
    onCleanup(() => ctrl.abort());
    let ended = false;
    let lastReceived = null;
    const workaround = (input, init) => {
      const headers = { ...init.headers };
      delete headers["last-event-id"];
      if (lastReceived) headers["last-event-id"] = lastReceived;
      return fetch(input, { ...init, headers });
    };
    fetchEventSource(job.url, {
      signal: ctrl.signal,
      headers: job.headers || {},
      openWhenHidden: true,
      fetch: job.plain ? fetch : workaround,
      async onopen(response) {
        out.connects += 1;
        out.status = response.status;
        if (response.ok && (response.headers.get("content-type") || "").startsWith("text/event-stream")) return;
        out.body = await response.text();
        throw new Fatal(`status ${response.status}`);
      },
      onmessage(msg) {
        if (msg.id) lastReceived = msg.id;
        out.events.push({ event: msg.event || "message", data: msg.data, id: msg.id });
        if (terminal(msg)) { ended = true; ctrl.abort(); finish(); }
      },
      onclose() { if (!ended) throw new Retriable("closed early"); },
      onerror(err) { if (err instanceof Fatal) throw err; return 200; },
    }).catch((err) => { out.error = String(err.message || err); finish(); });
  });
}

// eventsource-parser over Node's fetch: the reconnect loop is the caller's, with the last
// dispatched event's id.
function viaEventsourceParser(job) {
  return withDeadline(async (out, finish, onCleanup) => {
    const ctrl = new AbortController();
    onCleanup(() => ctrl.abort());
    let lastId = null;
    let ended = false;
    const parser = createParser({
      onEvent(e) {
        if (e.id !== undefined) lastId = e.id;
        const event = { event: e.event || "message", data: e.data, id: e.id ?? lastId };
        out.events.push(event);
        if (terminal(event)) { ended = true; ctrl.abort(); finish(); }
      },
    });
    for (let attempt = 0; attempt < 6 && !ended; attempt += 1) {
      try {
        const headers = { Accept: "text/event-stream", ...(job.headers || {}) };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(job.url, { headers, signal: ctrl.signal });
        out.connects += 1;
        out.status = response.status;
        if (response.status !== 200) { out.body = await response.text(); break; }
        parser.reset();
        const decoder = new TextDecoder();
        for await (const chunk of response.body) parser.feed(decoder.decode(chunk, { stream: true }));
      } catch (err) {
        if (ended) break;
        out.lastError = String(err);
      }
    }
    finish();
  });
}

const CLIENTS = { "eventsource": viaEventSource, "fetch-event-source": viaFetchEventSource,
  "eventsource-parser": viaEventsourceParser };

let input = "";
for await (const chunk of process.stdin) input += chunk;
const jobs = JSON.parse(input);
const results = await Promise.all(jobs.map((job) => CLIENTS[job.client](job).then((r) => [job.key, r])));
// Exit once the (large) output is flushed: a pipe write is asynchronous in Node.
process.stdout.write(JSON.stringify(Object.fromEntries(results)), () => process.exit(0));
