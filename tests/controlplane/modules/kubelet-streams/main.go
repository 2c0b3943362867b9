// STAND-IN for the streaming part of a kubelet: `kubectl port-forward` and `kubectl exec` (and piml's own) as
// the API server proxies them to a node, served by the kubelet's own streaming code (k8s.io/cri-streaming, what
// the kubelet's CRI streaming server runs) and the kubelet's WebSocket handling (k8s.io/apiserver's
// TunnelingHandler for port-forward and StreamTranslatorHandler for exec, as pkg/kubelet/server wraps them when
// ExtendWebSocketsToKubelet is on, the 1.36 default).
// The pods are not containers: a port of pod NAMESPACE/NAME is whatever TCP address the file --forwards maps
// it to ({"NAMESPACE/NAME": {"PORT": "HOST:PORT"}}), and a command exec'd in it runs as a local process with
// the environment the file --execs gives it ({"NAMESPACE/NAME": {"env": {...}}}), both read each time, so a test
// puts real programs (a Ray head, a Redis, a Python with Dask) behind a pod. Plain HTTP on loopback:
// tests/controlplane/kubelet_api.py, which checks the API server's client certificate on the node's kubelet
// port, passes these requests through to it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	proxy "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
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

type executor struct{ file string }

// ExecInContainer runs the command as a local process with the pod's environment from the execs file, wired to
// the streams, as a runtime runs it in the container; a non-zero exit is reported with its code.
func (e executor) ExecInContainer(ctx context.Context, pod string, uid string, container string, cmd []string,
	in io.Reader, out, stderr io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	raw, err := os.ReadFile(e.file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	execs := map[string]struct {
		Env map[string]string `json:"env"`
	}{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &execs); err != nil {
			return fmt.Errorf("%s: %v", e.file, err)
		}
	}
	found, ok := execs[pod]
	if !ok || len(cmd) == 0 {
		// what containerd says when the executable is not in the container
		return fmt.Errorf("OCI runtime exec failed: exec failed: unable to start container process: exec: %q: executable file not found in $PATH: unknown", strings.Join(cmd[:min(1, len(cmd))], ""))
	}
	process := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	process.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/root", "HOSTNAME=" + strings.SplitN(pod, "/", 2)[1]}
	for k, v := range found.Env {
		process.Env = append(process.Env, k+"="+v)
	}
	process.Stdin, process.Stdout, process.Stderr = in, out, stderr
	if out != nil {
		defer out.Close()
	}
	if stderr != nil {
		defer stderr.Close()
	}
	err = process.Run()
	var exited *exec.ExitError
	if errors.As(err, &exited) {
		return utilexec.CodeExitError{Err: err, Code: exited.ExitCode()}
	}
	return err
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	forwards := flag.String("forwards", "", "JSON file: {\"NAMESPACE/NAME\": {\"PORT\": \"HOST:PORT\"}}")
	execs := flag.String("execs", "", "JSON file: {\"NAMESPACE/NAME\": {\"env\": {\"NAME\": \"VALUE\"}}}")
	portFile := flag.String("port-file", "", "where to write the port it serves on, once it listens")
	flag.Parse()
	f := forwarder{file: *forwards}
	x := executor{file: *execs}

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

	// /exec/{namespace}/{pod}/{container}?command=..&input=..&output=..&error=..&tty=.., as the kubelet's server
	// routes it. A WebSocket with the stream-close protocol (v5, kubectl's default) is translated to SPDY and
	// sent to this server's own /cri/exec, as the kubelet sends it to the runtime's streaming server.
	var self string
	mux.HandleFunc("/exec/", func(w http.ResponseWriter, req *http.Request) {
		parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/exec/"), "/")
		if len(parts) < 3 || parts[0] == "" || parts[1] == "" {
			http.NotFound(w, req)
			return
		}
		options, err := remotecommand.NewOptions(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if wsstream.IsWebSocketRequestWithStreamCloseProtocol(req) {
			query := req.URL.Query()
			query.Set("pod", parts[0]+"/"+parts[1])
			query.Set("container", parts[len(parts)-1])
			location := &url.URL{Scheme: "http", Host: self, Path: "/cri/exec", RawQuery: query.Encode()}
			translated := proxy.Options{Stdin: options.Stdin, Stdout: options.Stdout, Stderr: options.Stderr, Tty: options.TTY}
			proxy.NewStreamTranslatorHandler(location, nil, 0, translated).ServeHTTP(w, req)
			return
		}
		remotecommand.ServeExec(w, req, x, parts[0]+"/"+parts[1], "", parts[len(parts)-1], req.URL.Query()["command"],
			options, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})
	mux.HandleFunc("/cri/exec", func(w http.ResponseWriter, req *http.Request) {
		options, err := remotecommand.NewOptions(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		query := req.URL.Query()
		remotecommand.ServeExec(w, req, x, query.Get("pod"), "", query.Get("container"), query["command"],
			options, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("kubelet-streams: %v", err)
	}
	self = listener.Addr().String()
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
