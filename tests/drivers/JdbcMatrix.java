// The PostgreSQL JDBC driver (pgjdbc, Debian's libpostgresql-jdbc-java) through pgsluice in
// transaction mode: many threads over a pool of two servers, each phase checked by its results.
// Run as a single-file program: java -cp /usr/share/java/postgresql.jar JdbcMatrix.java
//   a: the default prepareThreshold (5): from the fifth execution pgjdbc switches to a named
//      server-side statement (S_1, S_2, ...), which pgsluice must map onto whichever server runs it;
//   b: prepareThreshold=1: named statements from the first execution;
//   c: batched inserts (addBatch/executeBatch) inside explicit transactions, then counted;
//   d: a transaction using several named statements, rolled back, leaves nothing behind.
// Prints OK when every phase passed; any failure exits non-zero with the reason.

import java.net.URI;
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class JdbcMatrix {
    static final int THREADS = 8;
    static String url;
    static Properties base = new Properties();

    public static void main(String[] args) throws Exception {
        URI dsn = new URI(System.getenv("PGSLUICE_DSN"));
        String[] userInfo = dsn.getUserInfo().split(":", 2);
        url = "jdbc:postgresql://" + dsn.getHost() + ":" + dsn.getPort() + dsn.getPath();
        base.setProperty("user", userInfo[0]);
        base.setProperty("password", userInfo[1]);
        base.setProperty("connectTimeout", "10");
        base.setProperty("socketTimeout", "60");
        try (Connection c = connect(null)) {
            c.createStatement().execute(
                "CREATE TABLE IF NOT EXISTS jdbc_t (thread int, i int, note text)");
        }
        phase("a default prepareThreshold", null, JdbcMatrix::repeatedSelects);
        phase("b prepareThreshold=1", "1", JdbcMatrix::repeatedSelects);
        phase("c batched inserts", null, JdbcMatrix::batchedInserts);
        try (Connection c = connect(null)) {
            ResultSet r = c.createStatement().executeQuery("SELECT count(*) FROM jdbc_t");
            r.next();
            check(r.getInt(1) == THREADS * 5 * 100, "batched rows: " + r.getInt(1));
        }
        phase("d rolled back transaction", "1", JdbcMatrix::rolledBack);
        try (Connection c = connect(null)) {
            ResultSet r = c.createStatement().executeQuery(
                "SELECT count(*) FROM jdbc_t WHERE note = 'rolled back'");
            r.next();
            check(r.getInt(1) == 0, "rows of a rolled back transaction: " + r.getInt(1));
        }
        System.out.println("OK");
    }

    interface Work {
        void run(Connection c, int thread) throws Exception;
    }

    static Connection connect(String threshold) throws SQLException {
        Properties p = new Properties();
        p.putAll(base);
        if (threshold != null) {
            p.setProperty("prepareThreshold", threshold);
        }
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException("check failed: " + what);
        }
    }

    /// Runs `work` on THREADS connections at once; the first failure fails the phase.
    static void phase(String name, String threshold, Work work) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(THREADS);
        List<Future<?>> done = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
            final int thread = t;
            done.add(pool.submit(() -> {
                try (Connection c = connect(threshold)) {
                    work.run(c, thread);
                }
                return null;
            }));
        }
        pool.shutdown();
        try {
            for (Future<?> f : done) {
                f.get(120, TimeUnit.SECONDS);
            }
        } catch (ExecutionException e) {
            throw new IllegalStateException("phase " + name + ": " + e.getCause(), e.getCause());
        }
        System.out.println("phase " + name + ": passed");
    }

    /// The same statement 20 times in autocommit, past the threshold, then a second statement.
    static void repeatedSelects(Connection c, int thread) throws Exception {
        try (PreparedStatement s = c.prepareStatement("SELECT ?::int * 2, current_setting('application_name')")) {
            for (int i = 0; i < 20; i++) {
                s.setInt(1, thread * 100 + i);
                try (ResultSet r = s.executeQuery()) {
                    check(r.next() && r.getInt(1) == (thread * 100 + i) * 2, "select " + i);
                }
            }
        }
        try (PreparedStatement s = c.prepareStatement("SELECT length(?::text)")) {
            for (int i = 0; i < 10; i++) {
                s.setString(1, "x".repeat(i));
                try (ResultSet r = s.executeQuery()) {
                    check(r.next() && r.getInt(1) == i, "length " + i);
                }
            }
        }
    }

    /// Five transactions of 100 batched rows each.
    static void batchedInserts(Connection c, int thread) throws Exception {
        c.setAutoCommit(false);
        try (PreparedStatement s = c.prepareStatement(
                "INSERT INTO jdbc_t (thread, i, note) VALUES (?, ?, ?)")) {
            for (int tx = 0; tx < 5; tx++) {
                for (int i = 0; i < 100; i++) {
                    s.setInt(1, thread);
                    s.setInt(2, tx * 100 + i);
                    s.setString(3, "batch");
                    s.addBatch();
                }
                int[] counts = s.executeBatch();
                check(counts.length == 100, "batch size " + counts.length);
                c.commit();
            }
        }
    }

    /// Inserts and reads inside one transaction with two named statements, then rolls back.
    static void rolledBack(Connection c, int thread) throws Exception {
        c.setAutoCommit(false);
        try (PreparedStatement ins = c.prepareStatement(
                "INSERT INTO jdbc_t (thread, i, note) VALUES (?, ?, 'rolled back')");
             PreparedStatement count = c.prepareStatement(
                "SELECT count(*) FROM jdbc_t WHERE thread = ? AND note = 'rolled back'")) {
            for (int i = 0; i < 10; i++) {
                ins.setInt(1, thread);
                ins.setInt(2, i);
                ins.executeUpdate();
            }
            count.setInt(1, thread);
            try (ResultSet r = count.executeQuery()) {
                check(r.next() && r.getInt(1) == 10, "rows seen inside the transaction");
            }
        }
        c.rollback();
    }
}
