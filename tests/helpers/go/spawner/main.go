// Command spawner creates goroutines as fast as it can and checks every result, to show that
// goroutine ancestry's uprobes (at runtime.newproc1's returns) leave a goroutine-heavy program
// working: no crash, no corruption, even when goroutine stacks grow and move.
//
//	spawner -target ADDR -goroutines N
//
// It connects once to ADDR (so a tracer sees a Go process that dials), prints "connected",
// waits for a line on stdin (the go-ahead, once the tracer has attached), then runs N
// goroutines, each recursing deep enough to grow (and so copy) its stack, and prints
// "checked N" when every goroutine's answer was right. EOF on stdin ends it.
//
// Build with Debian's Go: GO111MODULE=off go build -o spawner .
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
)

func main() {
	target := flag.String("target", "", "an address to connect to once, HOST:PORT")
	goroutines := flag.Int("goroutines", 100000, "how many goroutines to create")
	flag.Parse()
	conn, err := net.Dial("tcp", *target)
	if err != nil {
		fmt.Fprintf(os.Stderr, "spawner: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	fmt.Println("connected")
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(0)
	}
	if wrong := spawnAll(*goroutines); wrong != 0 {
		fmt.Printf("wrong %d\n", wrong)
		os.Exit(1)
	}
	fmt.Printf("checked %d\n", *goroutines)
	// Stay until stdin closes, so the tracer can read this process's counters.
	stdin.ReadString('\n')
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
