// gRPC over TLS with @grpc/grpc-js (node's TLS: OpenSSL linked into node, memory BIOs).
//
// Usage: node grpc_node.js server PORT CERT KEY
//        node grpc_node.js client PORT CERT N
//
// One unary method, /tracer.test.Echo/Say, whose messages are raw bytes (no protobuf
// schema needed). The server answers each request with its own bytes, and with status
// NOT_FOUND (5) when the request is "missing". The client makes N calls "call-<i>" on one
// channel, then one "missing" call, checks every answer and prints "done N".
const grpc = require('@grpc/grpc-js');
const fs = require('fs');

const raw = (b) => b;
const service = {
  Say: {
    path: '/tracer.test.Echo/Say',
    requestStream: false,
    responseStream: false,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
  },
};

const [mode, port, cert, arg] = process.argv.slice(2);
const addr = '127.0.0.1:' + port;
if (mode === 'server') {
  const server = new grpc.Server();
  server.addService(service, {
    Say: (call, cb) => {
      if (call.request.toString() === 'missing') {
        cb({ code: grpc.status.NOT_FOUND, details: 'no such thing' });
      } else {
        cb(null, call.request);
      }
    },
  });
  const creds = grpc.ServerCredentials.createSsl(null, [
    { cert_chain: fs.readFileSync(cert), private_key: fs.readFileSync(arg) },
  ]);
  server.bindAsync(addr, creds, (err) => {
    if (err) throw err;
  });
} else {
  const n = Number(arg);
  const Client = grpc.makeGenericClientConstructor(service);
  const client = new Client(addr, grpc.credentials.createSsl(fs.readFileSync(cert)));
  const call = (i) => {
    if (i === n) {
      client.Say(Buffer.from('missing'), (err) => {
        if (!err || err.code !== grpc.status.NOT_FOUND) throw new Error('expected NOT_FOUND');
        client.close();
        console.log('done ' + n);
      });
      return;
    }
    const msg = Buffer.from('call-' + i);
    client.Say(msg, (err, reply) => {
      if (err) throw err;
      if (!reply.equals(msg)) throw new Error('bad reply');
      call(i + 1);
    });
  };
  call(0);
}
