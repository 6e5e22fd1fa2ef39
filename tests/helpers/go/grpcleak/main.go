// Command grpcleak replays leaktrace's flagship incident for real: a Go service that, for every
// Kafka message it consumed, dialed a new gRPC connection and never closed it (20,348 live
// connections before anyone noticed). It also runs the fixed program and the right design, so
// the same binary shows a leak, churn and a stable connection count.
//
//	grpcleak -mode server   -listen 127.0.0.1:0           a gRPC health server; prints "listening ADDR"
//	grpcleak -mode leak     -target ADDR [-rate N] [-count N]  the incident: a new connection per message, never closed
//	grpcleak -mode churn    -target ADDR ...              the fix: a new connection per message, closed after the call
//	grpcleak -mode shared   -target ADDR ...              the right design: one connection for every message
//	grpcleak -mode leak-tcp -target ADDR ...              a plain net.Dial per message, never closed
//	grpcleak -mode leak-two -target ADDR ...              the leak from two places: orders and payments alternate
//
// A client prints "handled N" on stdout after its Nth message. With -count it stops after that
// many messages and keeps its connections until it is killed. Whenever stdin is a pipe, its end
// (EOF) ends the program: a test harness that dies takes its helpers with it.
//
// The call path to the dial has readable names, kept out of line (go:noinline) so each one is a
// frame of its own in a stack trace: main.main -> main.consume -> main.handleMessage ->
// main.dialBackend -> main.dialGRPC / main.dialTCP.
//
// Build offline with Debian's Go and grpc-go (golang-go, golang-google-grpc-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o grpcleak .
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// How long one message may take (dial until ready, plus the call) before the program gives up.
const messageTimeout = 10 * time.Second

const (
	modeServer  = "server"
	modeLeak    = "leak"
	modeChurn   = "churn"
	modeShared  = "shared"
	modeLeakTCP = "leak-tcp"
	modeLeakTwo = "leak-two"
)

// backend is one connection to the backend service: a gRPC channel or a bare TCP connection.
type backend interface {
	// call makes the message's one request on this connection.
	call() error
	Close() error
}

// consumer is the message loop's state.
type consumer struct {
	mode   string
	target string
	// shared is the one connection of -mode shared, dialed at start.
	shared backend
	// leaked holds every connection of -mode leak and leak-tcp: referenced forever, never
	// closed, as in the incident.
	leaked []backend
}

func main() {
	mode := flag.String("mode", "", "server | leak | churn | shared | leak-tcp")
	listen := flag.String("listen", "127.0.0.1:0", "server: the address to listen on (port 0: any free port)")
	target := flag.String("target", "", "clients: the server's address, HOST:PORT")
	rate := flag.Int("rate", 10, "clients: messages per second (0: as fast as they are handled)")
	count := flag.Int("count", 0, "clients: stop after this many messages and keep running (0: never stop)")
	flag.Parse()

	exitWhenStdinPipeCloses()
	var err error
	switch *mode {
	case modeServer:
		err = serve(*listen)
	case modeLeak, modeChurn, modeShared, modeLeakTCP, modeLeakTwo:
		err = runClient(*mode, *target, *rate, *count)
	default:
		err = fmt.Errorf("unknown -mode %q; use server, leak, churn, shared, leak-tcp or leak-two", *mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "grpcleak: %v\n", err)
		os.Exit(1)
	}
}

// serve runs a gRPC server with grpc-go's own health service (no protoc step) until killed.
func serve(listen string) error {
	listener, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("server: cannot listen on %s: %w", listen, err)
	}
	server := grpc.NewServer()
	healthpb.RegisterHealthServer(server, health.NewServer())
	fmt.Fprintf(os.Stderr, "grpcleak: pid %d: server: gRPC health service on %s\n", os.Getpid(), listener.Addr())
	fmt.Printf("listening %s\n", listener.Addr())
	return server.Serve(listener)
}

func runClient(mode, target string, rate, count int) error {
	if target == "" {
		return fmt.Errorf("%s: -target HOST:PORT is required (the address -mode server printed)", mode)
	}
	what := map[string]string{
		modeLeak:    "dials a new gRPC connection per message, one health check, never closes it",
		modeChurn:   "dials a new gRPC connection per message, one health check, closes it",
		modeShared:  "one gRPC connection dialed at start, one health check per message on it",
		modeLeakTCP: "dials a new TCP connection per message (net.Dial), never closes it",
		modeLeakTwo: "alternates order and payment messages, each dialing its own gRPC connection, never closed",
	}[mode]
	limit := "no limit"
	if count > 0 {
		limit = fmt.Sprintf("stops after %d", count)
	}
	fmt.Fprintf(os.Stderr, "grpcleak: pid %d: %s: %s, to %s, %d messages/s, %s\n", os.Getpid(), mode, what, target, rate, limit)

	c := &consumer{mode: mode, target: target}
	if mode == modeShared {
		shared, err := dialBackend(mode, target)
		if err != nil {
			return err
		}
		c.shared = shared
	}
	if err := consume(c, rate, count); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "grpcleak: pid %d: %s: handled %d messages, holding %d leaked connections until killed\n",
		os.Getpid(), mode, count, len(c.leaked))
	select {}
}

// consume is the message loop: one message per tick, as a Kafka consumer would see them.
//
//go:noinline
func consume(c *consumer, rate, count int) error {
	var tick <-chan time.Time
	if rate > 0 {
		ticker := time.NewTicker(time.Second / time.Duration(rate))
		defer ticker.Stop()
		tick = ticker.C
	}
	for n := 1; count == 0 || n <= count; n++ {
		if tick != nil {
			<-tick
		}
		if err := handleMessage(c); err != nil {
			return fmt.Errorf("%s: message %d: %w", c.mode, n, err)
		}
		fmt.Printf("handled %d\n", n)
	}
	return nil
}

// handleMessage handles one message: the incident, its fix and the right design side by side.
//
//go:noinline
func handleMessage(c *consumer) error {
	switch c.mode {
	case modeLeakTwo:
		// Two code paths leak through the same library call: two call sites.
		var conn backend
		var err error
		if len(c.leaked)%2 == 0 {
			conn, err = dialOrders(c.target)
		} else {
			conn, err = dialPayments(c.target)
		}
		if err != nil {
			return err
		}
		c.leaked = append(c.leaked, conn)
		return conn.call()
	case modeShared:
		// The right design: every message reuses the connection dialed at start.
		return c.shared.call()
	case modeChurn:
		// The fix: a connection per message, closed after use (churn, not a leak). grpc-go
		// closes gracefully: if the call's stream is still being retired when Close returns,
		// the socket is closed a moment later by grpc's reader goroutine.
		conn, err := dialBackend(c.mode, c.target)
		if err != nil {
			return err
		}
		defer conn.Close()
		return conn.call()
	default:
		// The incident: a connection per message, kept referenced and never closed.
		conn, err := dialBackend(c.mode, c.target)
		if err != nil {
			return err
		}
		c.leaked = append(c.leaked, conn)
		return conn.call()
	}
}

// dialBackend opens one connection to the backend.
//
//go:noinline
func dialBackend(mode, target string) (backend, error) {
	if mode == modeLeakTCP {
		return dialTCP(target)
	}
	return dialGRPC(target)
}

// dialGRPC dials a gRPC channel and blocks until it is ready.
//
// The TCP connect does not run on this goroutine: grpc-go dials on a goroutine of its own
// (ClientConn -> addrConn.connect -> `go ac.resetTransport()`), so a stack taken at the
// connect() system call ends in grpc internals and none of this program's frames
// (main.handleMessage, main.dialBackend) are on it. The application's call site is on the
// goroutine that spawned it. -mode leak-tcp dials on this goroutine instead.
//
//go:noinline
func dialGRPC(target string) (backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), messageTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock(), grpc.WithReturnConnectionError())
	if err != nil {
		return nil, fmt.Errorf("dialing gRPC %s: %w (is `grpcleak -mode server` running there?)", target, err)
	}
	return &grpcBackend{conn: conn, health: healthpb.NewHealthClient(conn)}, nil
}

// dialOrders dials the orders service (here, the same test server) for one message.
//
//go:noinline
func dialOrders(target string) (backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), messageTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return nil, fmt.Errorf("dialing the orders service %s: %w", target, err)
	}
	return &grpcBackend{conn: conn, health: healthpb.NewHealthClient(conn)}, nil
}

// dialPayments dials the payments service (here, the same test server) for one message.
//
//go:noinline
func dialPayments(target string) (backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), messageTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return nil, fmt.Errorf("dialing the payments service %s: %w", target, err)
	}
	return &grpcBackend{conn: conn, health: healthpb.NewHealthClient(conn)}, nil
}

// dialTCP connects a plain TCP socket on this goroutine: the stack at connect() holds
// main.dialTCP, main.dialBackend, main.handleMessage, main.consume and main.main directly.
//
//go:noinline
func dialTCP(target string) (backend, error) {
	conn, err := net.DialTimeout("tcp", target, messageTimeout)
	if err != nil {
		return nil, fmt.Errorf("dialing TCP %s: %w", target, err)
	}
	return &tcpBackend{conn: conn}, nil
}

type grpcBackend struct {
	conn   *grpc.ClientConn
	health healthpb.HealthClient
}

// call is one health check.
func (b *grpcBackend) call() error {
	ctx, cancel := context.WithTimeout(context.Background(), messageTimeout)
	defer cancel()
	reply, err := b.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if reply.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check: server is %v, not SERVING", reply.Status)
	}
	return nil
}

func (b *grpcBackend) Close() error { return b.conn.Close() }

type tcpBackend struct {
	conn net.Conn
}

// http2Hello is an HTTP/2 client connection preface and an empty SETTINGS frame: what a gRPC
// client sends first. A gRPC server that receives it keeps the connection as a client's;
// without it the server drops the connection after its 120 s handshake timeout.
var http2Hello = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// call opens the HTTP/2 conversation and leaves it there.
func (b *tcpBackend) call() error {
	if _, err := b.conn.Write(http2Hello); err != nil {
		return fmt.Errorf("writing the HTTP/2 preface: %w", err)
	}
	return nil
}

func (b *tcpBackend) Close() error { return b.conn.Close() }

// exitWhenStdinPipeCloses ends the program when its stdin is a pipe and the writer goes away,
// so helpers never outlive the test that started them. A terminal or /dev/null is left alone.
func exitWhenStdinPipeCloses() {
	info, err := os.Stdin.Stat()
	if err != nil || info.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		fmt.Fprintf(os.Stderr, "grpcleak: pid %d: stdin closed, exiting\n", os.Getpid())
		os.Exit(0)
	}()
}
