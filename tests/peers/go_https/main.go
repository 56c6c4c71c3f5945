// HTTPS with Go's own crypto/tls (no OpenSSL): a net/http server, and a keep-alive client.
//
// Usage: go_https server PORT CERT KEY
//        go_https client PORT N
//
// The server answers every path with "hi <path>". The client sends N GETs /go/0 .. /go/N-1
// over one keep-alive connection, checks each answer and prints "done N".
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
		// HTTP/1.1 only: an empty TLSNextProto map turns off Go's automatic HTTP/2.
		srv := &http.Server{
			Addr:         "127.0.0.1:" + os.Args[2],
			TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		}
		if err := srv.ListenAndServeTLS(os.Args[3], os.Args[4]); err != nil {
			panic(err)
		}
	case "client":
		n, _ := strconv.Atoi(os.Args[3])
		c := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			MaxIdleConns:      1,
			ForceAttemptHTTP2: false,
		}}
		for i := 0; i < n; i++ {
			path := fmt.Sprintf("/go/%d", i)
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
