// Baseline for `switchboard-bench fanout --mode socketio` (and `switchboard-bench connect
// --mode socketio`): the Socket.IO v4 chat broadcast of the Socket.IO
// tutorial, except that a message goes to everyone else
// (`socket.broadcast.emit`) rather than to everyone. Only the WebSocket
// transport is offered (the bench client does not long-poll). Port from
// argv[2] or $PORT (0 = any free port); the "listening" line is for
// bench/run.sh.
//
//   npm install        # in this directory: installs ws and socket.io
//   node socketio-broadcast.js 8082

var http = require('http');
var Server = require('socket.io').Server;

var port = Number(process.argv[2] || process.env.PORT || 3000);
var httpServer = http.createServer();
var io = new Server(httpServer, {transports: ['websocket'], serveClient: false});

io.on('connection', function(socket) {
  // The tutorial's event is 'chat message'; the bench client sends 'msg'.
  ['msg', 'message', 'chat message'].forEach(function(event) {
    socket.on(event, function(msg) {
      socket.broadcast.emit(event, msg);
    });
  });
});

httpServer.listen(port, '127.0.0.1', function() {
  console.log('socketio-broadcast listening on ws://127.0.0.1:' + httpServer.address().port);
});
