// An app using a third-party Spring Cloud Config client, unmodified (npm
// cloud-config-client 1.6.2), pointed at its sidecar. It loads its config
// at start and again when POSTed /refresh (the sidecar's
// --config-reload-url).
//
//   node config_cloud_client_app.js PORT ENDPOINT APP PROFILE
//
// GET /greeting -> greeting.text, /password -> db.password.
'use strict';
const http = require('http');
const client = require('cloud-config-client');
const [port, endpoint, name, profiles] = process.argv.slice(2);
let config = null;

const load = () => client.load({ endpoint, name, profiles }).then((c) => {
  config = c;
  console.log(`loaded: ${c.get('greeting.text')}`);
});

http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/refresh') {
    load().then(() => { res.writeHead(200); res.end(); })
      .catch((e) => { res.writeHead(500); res.end(String(e)); });
    return;
  }
  const key = { '/greeting': 'greeting.text', '/password': 'db.password' }[req.url];
  const found = key && config ? config.get(key) : undefined;
  res.writeHead(found === undefined ? 404 : 200);
  res.end(found === undefined ? '' : String(found));
}).listen(Number(port), '127.0.0.1', () => {
  load().then(() => console.log('listening')).catch((e) => {
    console.error(e);
    process.exit(1);
  });
});
