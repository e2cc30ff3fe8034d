// Command grpcgo-client is a grpc-go OTLP client for the peer tests (tests/peers/test_grpc_go.py).
//
// It sends pre-serialized request messages, as bytes, to one gRPC method (the trace Export by
// default) with a raw bytes codec: the Python test builds the messages (so it knows every span's
// key), grpc-go frames them, manages its connections, follows GOAWAY and reports what it saw.
//
//	grpcgo-client -addr 127.0.0.1:4317 -requests FILE [-method /pkg.Service/Export]
//	    [-token T] [-conns 1] [-concurrency 4] [-rate 0] [-duration 0] [-timeout 10s]
//
// FILE holds records of a 4-byte big-endian length followed by that many message bytes. Each
// record is sent at most once, in order, spread over -concurrency goroutines sharing -conns
// ClientConns (round robin); -rate caps the calls started per second (0: as fast as answered);
// -duration stops starting calls after that long (0: send every record). No retries: every call
// is reported with the status the client got.
//
// The report is one JSON document on stdout:
//
//	{"grpc_version": "1.33.3", "seconds": 5.01, "connections": 6,
//	 "counts": {"OK": 990, "Unavailable": 1},
//	 "calls": [{"i": 0, "code": 0, "name": "OK", "message": "", "details": [], "retry_delay_ms": -1}, ...]}
//
// `code` is the gRPC status code's number and `name` grpc-go's name for it; `connections` counts the HTTP/2 connections grpc-go opened (a stats handler sees each one);
// `details` lists the type URLs of the google.rpc.Status details (grpc-status-details-bin);
// `retry_delay_ms` is RetryInfo's delay, -1 without one. It builds in GOPATH mode against
// Debian's golang-google-grpc-dev (GO111MODULE=off GOPATH=/usr/share/gocode), offline.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// rawCodec passes message bytes through untouched. Named "proto" so the content-type stays
// application/grpc+proto, as for any protobuf client.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: want *[]byte, got %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: want *[]byte, got %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// connCounter counts the connections grpc-go opens (one ConnBegin per HTTP/2 connection).
type connCounter struct{ n int64 }

func (c *connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *connCounter) HandleRPC(context.Context, stats.RPCStats)                       {}
func (c *connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c *connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnBegin); ok {
		atomic.AddInt64(&c.n, 1)
	}
}

type call struct {
	I            int      `json:"i"`
	Code         uint32   `json:"code"`
	Name         string   `json:"name"`
	Message      string   `json:"message"`
	Details      []string `json:"details"`
	RetryDelayMs int64    `json:"retry_delay_ms"`
}

type report struct {
	GrpcVersion string         `json:"grpc_version"`
	Seconds     float64        `json:"seconds"`
	Connections int64          `json:"connections"`
	Counts      map[string]int `json:"counts"`
	Calls       []call         `json:"calls"`
}

func readRequests(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	var size [4]byte
	for {
		if _, err := io.ReadFull(f, size[:]); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("record %d: length: %v", len(out), err)
		}
		body := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(f, body); err != nil {
			return nil, fmt.Errorf("record %d: body: %v", len(out), err)
		}
		out = append(out, body)
	}
}

func describe(i int, err error) call {
	c := call{I: i, Code: uint32(codes.OK), Name: codes.OK.String(), Details: []string{}, RetryDelayMs: -1}
	if err == nil {
		return c
	}
	s := status.Convert(err)
	c.Code, c.Name, c.Message = uint32(s.Code()), s.Code().String(), s.Message()
	for _, any := range s.Proto().GetDetails() {
		c.Details = append(c.Details, any.GetTypeUrl())
		var info errdetails.RetryInfo
		if ptypes.UnmarshalAny(any, &info) == nil && info.GetRetryDelay() != nil {
			if d, err := ptypes.Duration(info.GetRetryDelay()); err == nil {
				c.RetryDelayMs = d.Milliseconds()
			}
		}
	}
	return c
}

func main() {
	addr := flag.String("addr", "", "server host:port")
	requests := flag.String("requests", "", "file of length-prefixed request messages")
	method := flag.String("method", "/opentelemetry.proto.collector.trace.v1.TraceService/Export", "full method name")
	token := flag.String("token", "", "bearer token (authorization metadata)")
	conns := flag.Int("conns", 1, "ClientConns to spread the calls over")
	concurrency := flag.Int("concurrency", 4, "calls in flight at once")
	rate := flag.Float64("rate", 0, "calls started per second, all goroutines together (0: no cap)")
	duration := flag.Duration("duration", 0, "stop starting calls after this long (0: send every record)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	flag.Parse()
	if *addr == "" || *requests == "" || *conns < 1 || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "grpcgo-client: -addr and -requests are required; -conns, -concurrency >= 1")
		os.Exit(2)
	}
	bodies, err := readRequests(*requests)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcgo-client:", err)
		os.Exit(2)
	}

	counter := &connCounter{}
	clients := make([]*grpc.ClientConn, *conns)
	for k := range clients {
		clients[k], err = grpc.Dial(*addr,
			grpc.WithInsecure(),
			grpc.WithStatsHandler(counter),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallSendMsgSize(1<<26)),
		)
		if err != nil {
			fmt.Fprintln(os.Stderr, "grpcgo-client: dial:", err)
			os.Exit(2)
		}
	}

	start := time.Now()
	indices := make(chan int)
	go func() { // the pacer: hands out record indices at -rate until -duration or the end
		defer close(indices)
		for i := range bodies {
			if *duration > 0 && time.Since(start) >= *duration {
				return
			}
			if *rate > 0 {
				if wait := time.Until(start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))); wait > 0 {
					time.Sleep(wait)
				}
			}
			indices <- i
		}
	}()

	results := make([]*call, len(bodies))
	var wg sync.WaitGroup
	for g := 0; g < *concurrency; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range indices {
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				if *token != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
				}
				in, out := bodies[i], []byte(nil)
				err := clients[i%len(clients)].Invoke(ctx, *method, &in, &out)
				cancel()
				c := describe(i, err)
				results[i] = &c
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	for _, c := range clients {
		c.Close()
	}

	rep := report{GrpcVersion: grpc.Version, Seconds: elapsed, Counts: map[string]int{}, Calls: []call{}}
	for _, c := range results {
		if c != nil {
			rep.Calls = append(rep.Calls, *c)
			rep.Counts[c.Name]++
		}
	}
	rep.Connections = atomic.LoadInt64(&counter.n)
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "grpcgo-client:", err)
		os.Exit(1)
	}
}
