// Command httpleak is the most common Go connection leak, for real: an HTTP client that calls
// http.Get and never closes the response body, so net/http can never reuse the connection and
// dials a new one for every request. Its fix reads and closes the body, and one pooled
// connection serves every request.
//
//	httpleak -mode server -listen 127.0.0.1:0            an HTTP server; prints "listening ADDR"
//	httpleak -mode leak   -target ADDR [-rate N] [-count N]  http.Get per message, body never closed
//	httpleak -mode closed -target ADDR ...               http.Get per message, body read and closed
//
// A client prints "handled N" on stdout after its Nth message; with -count it stops after that
// many and keeps everything until killed. When stdin is a pipe, its end (EOF) ends the program.
//
// net/http dials on a goroutine of its own (Transport.queueForDial -> `go t.dialConnFor(w)`):
// the stack at connect() holds only the standard library, and this program's frames
// (main.fetchStatus, main.handleMessage) are on the goroutine that spawned it.
//
// Build with Debian's Go (golang-go), no module needed: GO111MODULE=off go build -o httpleak .
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	mode := flag.String("mode", "", "server | leak | closed")
	listen := flag.String("listen", "127.0.0.1:0", "server: the address to listen on")
	target := flag.String("target", "", "clients: the server's address, HOST:PORT")
	rate := flag.Int("rate", 10, "clients: messages per second (0: as fast as they are handled)")
	count := flag.Int("count", 0, "clients: stop after this many messages and keep running (0: never stop)")
	flag.Parse()

	exitWhenStdinPipeCloses()
	var err error
	switch *mode {
	case "server":
		err = serve(*listen)
	case "leak", "closed":
		err = runClient(*mode, *target, *rate, *count)
	default:
		err = fmt.Errorf("unknown -mode %q; use server, leak or closed", *mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "httpleak: %v\n", err)
		os.Exit(1)
	}
}

func serve(listen string) error {
	listener, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("server: cannot listen on %s: %w", listen, err)
	}
	fmt.Printf("listening %s\n", listener.Addr())
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return http.Serve(listener, handler)
}

func runClient(mode, target string, rate, count int) error {
	if target == "" {
		return fmt.Errorf("%s: -target HOST:PORT is required", mode)
	}
	url := "http://" + target + "/status"
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
		if err := handleMessage(mode, url); err != nil {
			return fmt.Errorf("%s: message %d: %w", mode, n, err)
		}
		fmt.Printf("handled %d\n", n)
	}
	select {}
}

// handleMessage asks the backend for its status, once per message.
//
//go:noinline
func handleMessage(mode, url string) error {
	if mode == "closed" {
		return fetchStatusAndClose(url)
	}
	return fetchStatus(url)
}

// leaked keeps every response of -mode leak referenced, as a careless cache would.
var leaked []*http.Response

// fetchStatus is the leak: the body is never closed, so the connection is never reused.
//
//go:noinline
func fetchStatus(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	leaked = append(leaked, resp)
	return nil
}

// fetchStatusAndClose is the fix: read and close the body, and the connection goes back to the
// pool for the next request.
//
//go:noinline
func fetchStatusAndClose(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func exitWhenStdinPipeCloses() {
	info, err := os.Stdin.Stat()
	if err != nil || info.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
}
