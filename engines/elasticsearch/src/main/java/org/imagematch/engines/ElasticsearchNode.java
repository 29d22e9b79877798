package org.imagematch.engines;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.elasticsearch.Version;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.index.mapper.MapperExtrasPlugin;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.reindex.ReindexPlugin;
import org.elasticsearch.transport.Netty4Plugin;

/**
 * Runs one Elasticsearch 7.17 node on loopback from a flat classpath, until SIGTERM.
 *
 * <pre>
 * java -Xms512m -Xmx512m -Des.set.netty.runtime.available.processors=false \
 *      -cp 'target/classes:target/lib/*' org.imagematch.engines.ElasticsearchNode \
 *      --data DIR [--port 9200] [--name NAME] [--cluster NAME] [--ready-file FILE] [--watch-pid PID]
 *      [-Ekey=value ...]
 * </pre>
 *
 * --port 0 binds any free port. Once the node is up, one line goes to stdout:
 * {@code image-match engine ready: elasticsearch VERSION http://127.0.0.1:PORT pid PID}
 * and, with --ready-file, the same facts as a small JSON object (written atomically).
 * --watch-pid stops the node when that process ends (a test run killed without cleanup).
 * --cluster names the cluster (default: the node's name). With -Ediscovery.seed_hosts the node
 * joins the nodes listed there instead of being a single-node cluster.
 * -E settings are passed to the node as in a distribution's bin/elasticsearch.
 */
public final class ElasticsearchNode {

    /**
     * The modules a distribution would load from modules/, here from the classpath. analysis-common
     * is not published on Maven Central for 7.17, so its analyzers and token filters are missing.
     */
    private static final List<Class<? extends Plugin>> MODULES = List.of(
        Netty4Plugin.class,
        ReindexPlugin.class,
        MapperExtrasPlugin.class
    );

    /** Node's constructor that takes classpath plugins is protected: subclass it to reach it. */
    private static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            // forbidPrivateIndexSettings=true: behave like a distribution, not like a test node.
            super(environment, plugins, true);
        }
    }

    private ElasticsearchNode() {}

    public static void main(String[] argv) throws Exception {
        LauncherArgs args;
        try {
            args = LauncherArgs.parse(argv);
        } catch (IllegalArgumentException e) {
            System.err.println("ElasticsearchNode: " + e.getMessage());
            System.err.println("usage: ElasticsearchNode --data DIR [--port N] [--name NAME] "
                + "[--cluster NAME] [--ready-file FILE] [--watch-pid PID] [-Ekey=value ...]");
            System.exit(2);
            return;
        }
        // Netty must not pin the processor count itself: the node sets it from its own settings.
        // Read by Netty's static initialisers, so set it before any Netty class loads.
        if (System.getProperty("es.set.netty.runtime.available.processors") == null) {
            System.setProperty("es.set.netty.runtime.available.processors", "false");
        }

        Path home = args.dataDir.resolve("home");
        // PluginsService scans these; they stay empty because the modules come from the classpath.
        Files.createDirectories(home.resolve("modules"));
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("config"));

        Settings extra = args.extraSettings.build();
        Settings.Builder builder = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", args.dataDir.resolve("data").toString())
            .put("path.logs", args.dataDir.resolve("logs").toString())
            .put("node.name", args.nodeName)
            .put("cluster.name", args.clusterName != null ? args.clusterName : args.nodeName);
        // One node is a cluster of its own, unless it is told where its peers are (a cluster on
        // loopback: -Ediscovery.seed_hosts=127.0.0.1:PORT,... and the initial cluster managers).
        if (!extra.hasValue("discovery.seed_hosts")) {
            builder.put("discovery.type", "single-node");
        }
        Settings settings = builder
            .put("network.host", "127.0.0.1")
            .put("http.port", Integer.toString(args.port))
            // The transport layer is unused by clients; a fixed 9300 would clash with a second node.
            .put("transport.port", "0")
            .put("transport.type", "netty4")
            .put("http.type", "netty4")
            // A developer's nearly full disk must not turn every index read-only.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(extra)
            .build();

        Node node;
        try {
            Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings, Collections.emptyMap(), null, () -> args.nodeName);
            node = new EmbeddedNode(environment, MODULES);
        } catch (RuntimeException e) {  // bad settings, a locked or incompatible data folder
            fail("the node could not be created", e);
            return;
        }

        CountDownLatch closed = new CountDownLatch(1);
        // The node's threads are daemons: main waits on this latch, which the hook releases after
        // closing the node, so SIGTERM (or SIGINT) flushes and closes the indices cleanly.
        Thread shutdownHook = new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(20, TimeUnit.SECONDS)) {
                    System.err.println("ElasticsearchNode: node did not close within 20 s");
                }
            } catch (IOException | InterruptedException e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "image-match-node-shutdown");
        Runtime.getRuntime().addShutdownHook(shutdownHook);

        try {
            node.start();
        } catch (Exception e) {  // e.g. the HTTP port is taken
            // Close here rather than in the hook, so that the reason is the log's last line.
            Runtime.getRuntime().removeShutdownHook(shutdownHook);
            try {
                node.close();
            } catch (IOException | RuntimeException closeFailure) {
                e.addSuppressed(closeFailure);
            }
            fail("the node failed to start", e);
        }

        int port = node.injector().getInstance(HttpServerTransport.class)
            .boundAddress().publishAddress().getPort();
        long pid = ProcessHandle.current().pid();
        String version = Version.CURRENT.toString();
        args.writeReadyFile("elasticsearch", version, port, pid);
        System.out.println("image-match engine ready: elasticsearch " + version + " http://127.0.0.1:" + port + " pid " + pid);
        System.out.flush();

        args.watchParent();
        closed.await();
    }

    /** Print the failure, its root cause last (the line a caller shows), and exit with status 1. */
    private static void fail(String what, Throwable e) {
        e.printStackTrace();
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        System.err.println("ElasticsearchNode: " + what + ": " + e + (root == e ? "" : " (caused by " + root + ")"));
        System.err.flush();
        System.exit(1);
    }

    /** The command line, parsed by hand: a dependency for six options is not worth it. */
    static final class LauncherArgs {
        Path dataDir;
        int port = 9200;
        String nodeName = "image-match";
        String clusterName;
        Path readyFile;
        long watchPid = -1;
        final Settings.Builder extraSettings = Settings.builder();

        static LauncherArgs parse(String[] argv) {
            LauncherArgs a = new LauncherArgs();
            for (int i = 0; i < argv.length; i++) {
                String arg = argv[i];
                if (arg.startsWith("-E")) {
                    String kv = arg.substring(2);
                    int eq = kv.indexOf('=');
                    if (eq <= 0) {
                        throw new IllegalArgumentException("expected -Ekey=value, got " + arg);
                    }
                    a.extraSettings.put(kv.substring(0, eq), kv.substring(eq + 1));
                    continue;
                }
                if (i + 1 >= argv.length) {
                    throw new IllegalArgumentException("missing value after " + arg);
                }
                String value = argv[++i];
                switch (arg) {
                    case "--data": a.dataDir = Paths.get(value).toAbsolutePath(); break;
                    case "--port": a.port = parsePort(value); break;
                    case "--name": a.nodeName = value; break;
                    case "--cluster": a.clusterName = value; break;
                    case "--ready-file": a.readyFile = Paths.get(value).toAbsolutePath(); break;
                    case "--watch-pid": a.watchPid = Long.parseLong(value); break;
                    default: throw new IllegalArgumentException("unknown option " + arg);
                }
            }
            if (a.dataDir == null) {
                throw new IllegalArgumentException("--data DIR is required");
            }
            return a;
        }

        private static int parsePort(String value) {
            int port = Integer.parseInt(value);
            if (port < 0 || port > 65535) {
                throw new IllegalArgumentException("--port must be 0..65535, got " + value);
            }
            return port;
        }

        void writeReadyFile(String kind, String version, int port, long pid) throws IOException {
            if (readyFile == null) {
                return;
            }
            String json = String.format(
                "{\"kind\": \"%s\", \"version\": \"%s\", \"http_port\": %d, \"pid\": %d}%n",
                kind, version, port, pid);
            // Written beside the target then renamed, so a reader never sees half a file.
            Path tmp = readyFile.resolveSibling(readyFile.getFileName() + ".tmp");
            Files.write(tmp, json.getBytes(StandardCharsets.UTF_8));
            Files.move(tmp, readyFile, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        }

        void watchParent() {
            if (watchPid <= 0) {
                return;
            }
            ProcessHandle.of(watchPid).ifPresentOrElse(
                handle -> handle.onExit().thenRun(() -> {
                    System.err.println("ElasticsearchNode: process " + watchPid + " ended, stopping");
                    System.exit(0);  // runs the shutdown hook
                }),
                () -> System.exit(0));
        }
    }
}
