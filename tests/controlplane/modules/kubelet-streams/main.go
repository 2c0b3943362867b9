// STAND-IN for the streaming part of a kubelet: `kubectl port-forward` (and piml's port-forwards) as the API
// server proxies them to a node, served by the kubelet's own streaming code (k8s.io/cri-streaming, what the
// kubelet's CRI streaming server runs) and the kubelet's WebSocket tunnelling (k8s.io/apiserver's
// TunnelingHandler, as pkg/kubelet/server wraps it when ExtendWebSocketsToKubelet is on, the 1.36 default).
// The pods are not containers: a port of pod NAMESPACE/NAME is whatever TCP address the file --forwards maps
// it to ({"NAMESPACE/NAME": {"PORT": "HOST:PORT"}}), read at each connection, so a test puts a real process
// (a Ray head, a Redis) behind a pod. Plain HTTP on loopback: tests/controlplane/kubelet_api.py, which checks
// the API server's client certificate on the node's kubelet port, passes these requests through to it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	proxy "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The kubelet's defaults (KubeletConfiguration streamingConnectionIdleTimeout 4h; stream creation 30 s).
const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
	dialTimeout           = 5 * time.Second
)

type forwarder struct{ file string }

// PortForward copies between the stream and the address the forwards file gives the pod's port, as the
// container runtime copies between it and the port inside the pod's network namespace.
func (f forwarder) PortForward(ctx context.Context, pod string, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	raw, err := os.ReadFile(f.file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	forwards := map[string]map[string]string{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &forwards); err != nil {
			return fmt.Errorf("%s: %v", f.file, err)
		}
	}
	target, ok := forwards[pod][fmt.Sprint(port)]
	if !ok {
		// what a runtime says when nothing listens on the port inside the pod
		return fmt.Errorf("failed to connect to localhost:%d inside namespace of pod %s: connection refused", port, pod)
	}
	conn, err := net.DialTimeout("tcp", target, dialTimeout)
	if err != nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace of pod %s: %v", port, pod, err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(conn, stream) //nolint:errcheck
		if tcp, ok := conn.(*net.TCPConn); ok {
			tcp.CloseWrite() //nolint:errcheck
		}
	}()
	io.Copy(stream, conn) //nolint:errcheck
	stream.Close()
	wg.Wait()
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	forwards := flag.String("forwards", "", "JSON file: {\"NAMESPACE/NAME\": {\"PORT\": \"HOST:PORT\"}}")
	portFile := flag.String("port-file", "", "where to write the port it serves on, once it listens")
	flag.Parse()
	f := forwarder{file: *forwards}

	mux := http.NewServeMux()
	// /portForward/{namespace}/{pod}[/{uid}], as the kubelet's server routes it
	mux.HandleFunc("/portForward/", func(w http.ResponseWriter, req *http.Request) {
		parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/portForward/"), "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			http.NotFound(w, req)
			return
		}
		pod := parts[0] + "/" + parts[1]
		tunnel := wsstream.IsWebSocketRequestWithTunnelingProtocol(req)
		options := &portforward.V4Options{}
		if !tunnel {
			var err error
			if options, err = portforward.NewV4Options(req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			portforward.ServePortForward(w, req, f, pod, "", options, idleTimeout, streamCreationTimeout,
				portforward.SupportedProtocols)
		})
		if tunnel {
			handler = proxy.NewTunnelingHandler(handler)
		}
		handler.ServeHTTP(w, req)
	})

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("kubelet-streams: %v", err)
	}
	if *portFile != "" {
		port := fmt.Sprint(listener.Addr().(*net.TCPAddr).Port)
		if err := os.WriteFile(*portFile+".tmp", []byte(port), 0o600); err != nil {
			log.Fatalf("kubelet-streams: %v", err)
		}
		if err := os.Rename(*portFile+".tmp", *portFile); err != nil {
			log.Fatalf("kubelet-streams: %v", err)
		}
	}
	log.Fatal((&http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}).Serve(listener))
}
