// An unmodified Java client for the mesh's protocol tests: the JDK's own
// java.net.http.HttpClient with its default settings. On cleartext URLs the
// default client (HTTP_2 preferred) sends every request as HTTP/1.1 with
// `Connection: Upgrade, HTTP2-Settings` and `Upgrade: h2c`, which is exactly
// what the mesh must not break.
//
// Run (JDK 17+ source launcher, no build step): java HttpCheck.java URL
// It sends GET URL, then POST URL with the body "posted by java", and prints
// one line per request:
//   GET <status> <HTTP version> <body on one line>
//   POST <status> <HTTP version> <body on one line>
// Exit status 0 when both answered 200, 1 otherwise, 2 on bad arguments.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class HttpCheck {
    /** Bounds each request, so a stalled mesh fails the check instead of hanging it. */
    private static final Duration TIMEOUT = Duration.ofSeconds(5);

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java HttpCheck.java URL");
            System.exit(2);
        }
        URI uri = URI.create(args[0]);
        HttpClient client = HttpClient.newHttpClient();
        HttpRequest get = HttpRequest.newBuilder(uri).timeout(TIMEOUT).GET().build();
        HttpRequest post = HttpRequest.newBuilder(uri)
                .timeout(TIMEOUT)
                .header("Content-Type", "text/plain")
                .POST(HttpRequest.BodyPublishers.ofString("posted by java"))
                .build();
        boolean ok = true;
        for (HttpRequest request : new HttpRequest[] {get, post}) {
            try {
                HttpResponse<String> response =
                        client.send(request, HttpResponse.BodyHandlers.ofString());
                String body = response.body().replace('\n', ' ').trim();
                System.out.println(request.method() + " " + response.statusCode() + " "
                        + response.version() + " " + body);
                ok &= response.statusCode() == 200;
            } catch (java.io.IOException e) {
                System.out.println(request.method() + " 0 - " + e);
                ok = false;
            }
        }
        System.exit(ok ? 0 : 1);
    }
}
