// HTTPS with Go's own crypto/tls (no OpenSSL): a net/http server, and a keep-alive client.
//
// Usage: go_https server PORT CERT KEY
//        go_https client PORT N [h2]
//
// The server (HTTP/1.1 and, by ALPN, HTTP/2) answers every path with "hi <path>". The client
// sends N GETs /go/0 .. /go/N-1 (with h2: /h2/0 ...) over one keep-alive connection, HTTP/1.1
// unless h2 is given, checks each answer and prints "done N".
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
)

func main() {
	switch os.Args[1] {
	case "server":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hi %s", r.URL.Path)
		})
		if err := http.ListenAndServeTLS("127.0.0.1:"+os.Args[2], os.Args[3], os.Args[4], nil); err != nil {
			panic(err)
		}
	case "client":
		n, _ := strconv.Atoi(os.Args[3])
		h2 := len(os.Args) > 4 && os.Args[4] == "h2"
		// A custom TLS config turns off Go's automatic HTTP/2 unless it is forced.
		c := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			MaxIdleConns:      1,
			ForceAttemptHTTP2: h2,
		}}
		prefix := "/go/"
		if h2 {
			prefix = "/h2/"
		}
		for i := 0; i < n; i++ {
			path := fmt.Sprintf("%s%d", prefix, i)
			resp, err := c.Get("https://127.0.0.1:" + os.Args[2] + path)
			if err != nil {
				panic(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hi "+path {
				panic("bad answer " + string(body))
			}
		}
		fmt.Printf("done %d\n", n)
	}
}
