'use strict'
// Loaded with `node --require` (NODE_OPTIONS) into the Flowise servers under test.
// LangChain counts tokens with js-tiktoken and downloads the ranks from
// https://tiktoken.pages.dev/js/<encoding>.json through the global fetch. Offline that download
// fails and LangChain retries with backoff for minutes per prediction. The same data ships in the
// installed js-tiktoken package (js-tiktoken/ranks/<encoding>), so answer those URLs from disk and
// pass every other request through untouched.
const path = require('path')
const { createRequire } = require('module')

const RANKS_URL = /^https:\/\/tiktoken\.pages\.dev\/js\/([a-z0-9_]+)\.json$/
// Resolve js-tiktoken the way Flowise does: from the install folder the server runs in.
const requireFromServer = createRequire(path.join(process.cwd(), 'package.json'))
const ranksJson = new Map()

function loadRanks(encoding) {
    if (!ranksJson.has(encoding)) {
        const ranks = requireFromServer(`js-tiktoken/ranks/${encoding}`)
        ranksJson.set(encoding, JSON.stringify(ranks.default ?? ranks))
        // One line per encoding in the server log shows the stall is being avoided.
        process.stderr.write(`[tiktoken_offline] serving ${encoding} ranks from js-tiktoken\n`)
    }
    return ranksJson.get(encoding)
}

function requestUrl(input) {
    if (typeof input === 'string') return input
    if (input instanceof URL) return input.href
    return input && typeof input.url === 'string' ? input.url : ''
}

const realFetch = globalThis.fetch
globalThis.fetch = async function fetch(input, init) {
    const match = RANKS_URL.exec(requestUrl(input))
    if (!match) return realFetch(input, init)
    return new Response(loadRanks(match[1]), { status: 200, headers: { 'content-type': 'application/json' } })
}
