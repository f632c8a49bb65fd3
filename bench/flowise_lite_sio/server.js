'use strict'
/*
 * flowise-lite-sio: a lean Flowise 1.6.2 (socket.io streaming) for the benchmark.
 *
 *   node bench/flowise_lite_sio/server.js --port N [--host 127.0.0.1] [--answer-lag 0.01]
 *   (or: python bench/servers.py lite-sio --port N, which installs node_modules first if needed)
 *
 * Why: the package's emulator (flowise_sse.emulator, a python-socketio server) saturates its own
 * core before the gateway does, so over socket.io the benchmark measured the emulator. This one uses
 * the same server library as real Flowise 1.x, the `socket.io` npm package (4.x: Engine.IO v4,
 * socket.io protocol v5, the version the cached real Flowise 1.6.2 runs), on Node's plain http server.
 *
 * What it emulates, with the package emulator's 1.6.2 wire shapes (service/flowise_sse/emulator/,
 * its quirks for 1.6.2, which follow captures of a real 1.6.2):
 *   GET  /api/v1/version                   {"version": "1.6.2"} (the gateway learns the transport from it)
 *   GET  /api/v1/chatflows-streaming/{id}  {"isStreaming": true} for the demo chatflow; else 404 text/html
 *   POST /api/v1/prediction/{id}           with `socketIOClientId`: to that socket `start ""`, `token ""`,
 *        the tokens, `token ""`, `end` (no payload); then, `--answer-lag` seconds later (real 1.6.2:
 *        about 10 ms), the HTTP JSON {text, question, chatId, chatMessageId, sessionId, memoryType}.
 *        Without a connected socket, the same JSON once the tokens' time has passed (no events).
 *   socket.io on the default path /socket.io/, namespace "/", no auth, CORS open (like Flowise 1.x).
 * The tokens and their delay come from the request, as the package emulator takes them:
 * `overrideConfig.emulator = {"tokens": [...], "delay": seconds}`, or `{"count": n, ...}` for the bench's
 * "t0 ", "t1 ", ... made here (a list would ride in every request) (default: the emulator's mock reply,
 * no delay). Paced tokens go out on an absolute schedule (token k due at start + k * delay) from timers,
 * so thousands of streams stay on time; with no delay, as fast as the socket takes them (a batch at a
 * time, the next when Engine.IO has handed the previous one to the kernel), and the answer once an
 * Engine.IO ping sent after `end` has its pong: the one frame real Flowise would not send, so that the
 * answer cannot overtake the tokens still in the kernel's buffers (see `finish`).
 *
 * Also `GET /__lite/stats`: how late its own timers sent the paced tokens against their schedule
 * (p50, p99, max in ms; `DELETE` reads and resets), so a benchmark can tell its lateness from the gateway's.
 *
 * What it leaves out: every other Flowise route (no /api/v1/ping: 1.6.2 has none; no chatflow listing,
 * chat messages, auth, keyed or non-streaming chatflows, history, LLM errors, `sourceDocuments` and the
 * other per-node events), and real Flowise running on after its HTTP client left: here a prediction
 * stops when its HTTP request goes away, like the package emulator's.
 */

const http = require('node:http')
const { randomUUID } = require('node:crypto')
const { performance } = require('node:perf_hooks')
const { Server } = require('socket.io')

const VERSION = '1.6.2'
const DEMO_CHATFLOW_ID = '3c9866f3-f7de-4cf0-bcca-26807ac532c4' // flowise_sse.emulator.DEMO_CHATFLOW_ID
const REPLY_PREFIX = 'This is a deterministic mock reply. You said: '
const BATCH = 256 // unflushed packets before a fast stream waits for Engine.IO's drain
const LATE_BUCKETS = 10000 // paced tokens' lateness, in 0.1 ms buckets up to 1 s (the last: 1 s or more)

function option (name, fallback) {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const port = Number(option('port', '3000'))
const host = option('host', '127.0.0.1')
const answerLagMs = Number(option('answer-lag', '0.01')) * 1000

// --- how late the paced tokens left: GET /__lite/stats (DELETE: the same, then reset) -----------

let late = new Uint32Array(LATE_BUCKETS)

function recordLate (ms) {
  late[Math.min(LATE_BUCKETS - 1, Math.max(0, Math.floor(ms * 10)))]++
}

function lateStats () {
  const count = late.reduce((a, b) => a + b, 0)
  const at = (q) => { // the bucket's upper edge, in ms
    let seen = 0
    for (let i = 0; i < LATE_BUCKETS; i++) if ((seen += late[i]) >= q * count) return (i + 1) / 10
    return null
  }
  let max = null
  for (let i = LATE_BUCKETS - 1; i >= 0; i--) if (late[i]) { max = (i + 1) / 10; break }
  return { pacedTokens: count, lateP50Ms: count ? at(0.5) : null, lateP99Ms: count ? at(0.99) : null, lateMaxMs: max }
}

// --- HTTP -----------------------------------------------------------------------------------

function send (res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) })
  res.end(body)
}

function json (res, value, status = 200) {
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value))
}

function notFound (res, message) {
  send(res, 404, 'text/html; charset=utf-8', message) // 1.x: res.status(404).send(message)
}

function handle (req, res) {
  const path = req.url.split('?', 1)[0]
  const parts = path.split('/') // ['', 'api', 'v1', route, id]
  if (req.method === 'GET' && path === '/api/v1/version') {
    json(res, { version: VERSION })
  } else if (req.method === 'GET' && parts.length === 5 && parts[3] === 'chatflows-streaming') {
    if (parts[4] === DEMO_CHATFLOW_ID) json(res, { isStreaming: true })
    else notFound(res, `Chatflow ${parts[4]} not found`)
  } else if (path === '/__lite/stats' && (req.method === 'GET' || req.method === 'DELETE')) {
    json(res, lateStats())
    if (req.method === 'DELETE') late = new Uint32Array(LATE_BUCKETS)
  } else if (req.method === 'POST' && parts.length === 5 && parts[3] === 'prediction') {
    const chunks = []
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', () => predict(parts[4], Buffer.concat(chunks), res))
  } else {
    send(res, 404, 'text/plain; charset=utf-8', 'Not Found') // as the package emulator (Starlette) answers
  }
}

// --- the prediction -------------------------------------------------------------------------

// `fn` once, on whichever of `events` comes first.
function onFirst (emitter, events, fn) {
  const handler = () => {
    for (const event of events) emitter.off(event, handler)
    fn()
  }
  for (const event of events) emitter.on(event, handler)
}

function words (text) {
  return text.match(/\s*\S+(?:\s+$)?/g) || [] // "This", " is", ...: the emulator's mock LLM
}

function predict (flowId, raw, res) {
  let body
  try {
    body = raw.length ? JSON.parse(raw) : {}
  } catch {
    send(res, 400, 'text/plain; charset=utf-8', 'Bad Request')
    return
  }
  if (body === null || typeof body !== 'object') body = {}
  if (flowId !== DEMO_CHATFLOW_ID) {
    notFound(res, `Chatflow ${flowId} not found`)
    return
  }
  const overrides = (body.overrideConfig && typeof body.overrideConfig === 'object') ? body.overrideConfig : {}
  const controls = (overrides.emulator && typeof overrides.emulator === 'object') ? overrides.emulator : {}
  const question = String(body.question ?? '')
  const tokens = Array.isArray(controls.tokens) ? controls.tokens.map(String)
    : Number.isInteger(controls.count) ? Array.from({ length: controls.count }, (_, i) => `t${i} `) // bench/common.py tokens_for
      : words(REPLY_PREFIX + question.trim())
  const delayMs = Number(controls.delay ?? 0) * 1000
  const sessionId = overrides.sessionId
  const chatId = body.chatId ?? sessionId ?? randomUUID()
  const answer = {
    text: tokens.join(''), question, chatId, chatMessageId: randomUUID(), sessionId: sessionId ?? chatId,
    memoryType: 'Buffer Memory'
  }
  const reply = () => { timer = setTimeout(() => json(res, answer), answerLagMs) }
  // Flowise emits with socketIO.to(id): a socket that is not (or no longer) connected gets nothing.
  const socket = io.of('/').sockets.get(body.socketIOClientId)
  let timer = null
  let stop = false
  res.on('close', () => { // the HTTP client left: stop the run (timers, flood)
    stop = true
    clearTimeout(timer)
  })
  if (!socket) {
    timer = setTimeout(reply, tokens.length * delayMs)
    return
  }
  const t0 = performance.now()
  let i = 0
  const conn = socket.conn
  const finish = () => {
    socket.emit('token', '') // the LLM's empty finish chunk, forwarded as 1.6.2 does
    socket.emit('end')
    if (delayMs > 0 || conn.readyState !== 'open') {
      reply()
      return
    }
    // A fast stream is written far ahead of its reader (the kernel's socket buffers hold hundreds of
    // KB), and a JSON answer sent now would overtake it: the gateway would wait its grace period, then
    // make up the unread rest from the answer's text, and the benchmark would time that instead of the
    // relay. So the answer waits for an Engine.IO ping's pong: the client has read every token by then.
    onFirst(conn, ['heartbeat', 'close'], reply)
    conn.sendPacket('ping')
  }

  // Paced: each timer sends every token due by now (catching up if the loop ran late), then waits
  // for the next token's due time, start + (k + 1) * delay: lateness never accumulates. The wait is in
  // whole ms (libuv's resolution anyway): Node keeps one timer list per distinct duration, and
  // fractional ones would make a list per token.
  const paced = () => {
    const now = performance.now()
    do {
      recordLate(now - (t0 + (i + 1) * delayMs))
      socket.emit('token', tokens[i++])
    } while (i < tokens.length && t0 + (i + 1) * delayMs <= now)
    if (i < tokens.length) timer = setTimeout(paced, Math.max(1, Math.round(t0 + (i + 1) * delayMs - now)))
    else finish()
  }

  // No delay: emit until BATCH packets wait in Engine.IO's buffer, then resume on its `drain` (fired
  // when the previous batch was written out and this one handed to the transport), so the tokens go
  // as fast as the socket takes them without piling up in memory. A closed socket drops packets.
  const flood = () => {
    while (i < tokens.length) {
      if (stop) return
      if (conn.readyState !== 'open') { i = tokens.length; break }
      if (conn.writeBuffer.length >= BATCH) {
        onFirst(conn, ['drain', 'close'], flood)
        return
      }
      socket.emit('token', tokens[i++])
    }
    finish()
  }

  socket.emit('start', '') // the LLM's empty role chunk: `start` carries it, and it is forwarded
  socket.emit('token', '')
  if (tokens.length === 0) finish()
  else if (delayMs > 0) timer = setTimeout(paced, delayMs)
  else flood()
}

// --- the server -----------------------------------------------------------------------------

const server = http.createServer(handle)
const io = new Server(server, { cors: { origin: '*' } }) // Flowise 1.x: new Server(server, { cors })
server.listen(port, host, 4096, () => {
  console.log(`flowise-lite-sio (Flowise ${VERSION}, socket.io ${require('socket.io/package.json').version}) ` +
              `on http://${host}:${port}`)
})
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
