// Command spawner creates goroutines as fast as it can and checks every result, to show that
// goroutine ancestry's uprobes (at runtime.newproc1's returns) leave a goroutine-heavy program
// working (no crash, no corruption, even when goroutine stacks grow and move), and to measure
// what they cost per goroutine and per dial.
//
//	spawner [-goroutines N] [-dials M]
//
// It listens on a loopback port, prints "ready" and waits for a line on stdin; then connects to
// itself once (so a tracer started meanwhile sees a Go process that dials), prints "connected",
// and waits for another line (the go-ahead, once the tracer has attached). Then:
//   - N goroutines, each recursing deep enough to grow (and so copy) its stack; prints
//     "checked N in T ns" when every goroutine's answer was right ("wrong K" and exit 1 if not);
//   - M dials, one after another, each from a goroutine of its own (as gRPC and net/http dial),
//     each connection closed at once; prints "dialed M in T ns".
//
// It stays until stdin closes. Build with Debian's Go: GO111MODULE=off go build -o spawner .
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	goroutines := flag.Int("goroutines", 100000, "how many goroutines to create")
	dials := flag.Int("dials", 0, "how many connections to dial, each from a new goroutine")
	flag.Parse()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	go acceptAndClose(listener)
	fmt.Println("ready")
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(0)
	}
	conn, err := net.Dial("tcp", listener.Addr().String())
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	fmt.Println("connected")
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(0)
	}
	start := time.Now()
	if wrong := spawnAll(*goroutines); wrong != 0 {
		fmt.Printf("wrong %d\n", wrong)
		os.Exit(1)
	}
	fmt.Printf("checked %d in %d ns\n", *goroutines, time.Since(start).Nanoseconds())
	if *dials > 0 {
		start = time.Now()
		if err := dialEach(listener.Addr().String(), *dials); err != nil {
			fail(err)
		}
		fmt.Printf("dialed %d in %d ns\n", *dials, time.Since(start).Nanoseconds())
	}
	stdin.ReadString('\n')
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "spawner: %v\n", err)
	os.Exit(1)
}

func acceptAndClose(listener net.Listener) {
	for {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		go func() {
			var one [1]byte
			conn.Read(one[:])
			conn.Close()
		}()
	}
}

// spawnAll runs n goroutines in batches and returns how many answered wrong.
//
//go:noinline
func spawnAll(n int) int {
	const batch = 1000
	wrong := 0
	var mu sync.Mutex
	for start := 0; start < n; start += batch {
		var wg sync.WaitGroup
		for i := start; i < start+batch && i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				if deep(i, 64) != i+64*65/2 {
					mu.Lock()
					wrong++
					mu.Unlock()
				}
			}(i)
		}
		wg.Wait()
	}
	return wrong
}

// deep recurses with a frame large enough that 64 levels outgrow a goroutine's first stack,
// so the runtime copies the stack (moving every frame) while it runs.
//
//go:noinline
func deep(value, depth int) int {
	var pad [128]byte
	pad[depth%128] = byte(depth)
	if depth == 0 {
		return value + int(pad[0])
	}
	return deep(value+depth, depth-1) + int(pad[depth%128]) - depth%256
}

// dialEach dials addr m times, one at a time, each from a new goroutine, closing each at once.
//
//go:noinline
func dialEach(addr string, m int) error {
	errs := make(chan error)
	for i := 0; i < m; i++ {
		go func() {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				err = conn.Close()
			}
			errs <- err
		}()
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}
