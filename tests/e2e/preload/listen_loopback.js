'use strict'
// Loaded with `node --require` (NODE_OPTIONS) into the Flowise servers under test.
// Flowise 1.6.2 has no host setting and calls `server.listen(port)`, which binds every interface;
// the e2e tests must keep their servers on loopback, so a listen() that names a TCP port but no
// host gets LISTEN_HOST (default 127.0.0.1). Listens on a path, a handle or with a host are left alone.
const net = require('net')

const host = process.env.LISTEN_HOST || '127.0.0.1'
const originalListen = net.Server.prototype.listen

const isPort = (value) => typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value))

net.Server.prototype.listen = function listen(...args) {
    const [first, second] = args
    if (isPort(first) && typeof second !== 'string') {
        // listen(port[, backlog][, callback]) -> listen(port, host[, backlog][, callback])
        args.splice(1, 0, host)
    } else if (
        first !== null &&
        typeof first === 'object' &&
        isPort(first.port) &&
        first.host === undefined &&
        first.path === undefined
    ) {
        args[0] = { ...first, host }
    }
    return originalListen.apply(this, args)
}
