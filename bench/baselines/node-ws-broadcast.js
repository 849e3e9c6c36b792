// Baseline for `switchboard-bench fanout --mode relay`: the Node.js `ws`
// broadcast chat server from the tutorial in shared/seeds (001), as written
// there; only the port (argv[2] or $PORT, 0 = any free port) and the
// "listening" line for bench/run.sh are added. Every message goes to every
// other client, on any path.
//
//   npm install        # in this directory: installs ws
//   node node-ws-broadcast.js 8081

var WebSocketServer = require('ws').Server,
  wss = new WebSocketServer({port: Number(process.argv[2] || process.env.PORT || 8080)});

wss.on('listening', function() {
  console.log('node-ws-broadcast listening on ws://127.0.0.1:' + wss.address().port);
});

//  Connection pool
var clients = [];

wss.on('connection', function(ws) {
  //  Add the connection to the connection pool
  clients.push(ws);
  ws.on('message', function(message) {
    //  Broadcast message
    clients.forEach(function(ws1){
      if(ws1 !== ws) {
        ws1.send(message);
      }
    })
  });

  ws.on('close', function(message) {
    //  When a connection is closed, move it out of the connection pool
    clients = clients.filter(function(ws1){
      return ws1 !== ws
    })
  });
});
