// HTTPS with node's own TLS (OpenSSL linked into the node binary, memory BIOs).
//
// Usage: node https_node.js server PORT CERT KEY
//        node https_node.js client PORT N PARALLEL
//
// The server answers every path with `hi <path>`. The client sends N GETs /n/0 .. /n/N-1,
// PARALLEL at a time over a keep-alive agent of PARALLEL sockets, checks each answer and
// prints `done N` at the end.
const https = require('https');
const fs = require('fs');

const [mode, port, a, b] = process.argv.slice(2);
if (mode === 'server') {
  https.createServer({ cert: fs.readFileSync(a), key: fs.readFileSync(b) }, (req, res) => {
    res.end('hi ' + req.url);
  }).listen(Number(port), '127.0.0.1');
} else {
  const n = Number(a);
  const parallel = Number(b);
  const agent = new https.Agent({ keepAlive: true, maxSockets: parallel });
  let next = 0;
  let done = 0;
  const one = () => {
    if (next >= n) return;
    const path = '/n/' + next++;
    https.get({ host: '127.0.0.1', port: Number(port), path, agent, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        if (body !== 'hi ' + path) throw new Error('bad answer ' + body + ' for ' + path);
        if (++done === n) {
          agent.destroy();
          console.log('done ' + n);
        } else {
          one();
        }
      });
    }).on('error', (e) => { throw e; });
  };
  for (let i = 0; i < parallel; i++) one();
}
