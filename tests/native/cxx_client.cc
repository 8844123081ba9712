// The C client's header used unchanged from C++ (compiled by tests/test_c_client.py with
// g++ -std=c++17 -Wall -Wextra -Werror, linked with the C library): a small RAII wrapper,
// an object sealed through the arena and read back. `cxx_client SOCKET` prints "ok".
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "plasma_coord.h"

namespace {

class Client {
  public:
    explicit Client(const char *socket) {
        int status = pc_connect(socket, "c++", &client_);
        if (status != PC_OK) {
            std::runtime_error error(message("connect", status));
            pc_close(client_);  // (a failed connect still hands over a client to close)
            throw error;
        }
    }
    ~Client() { pc_close(client_); }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;

    void put(const uint8_t (&id)[PC_ID_SIZE], const std::string &bytes) {
        check("create_and_seal",
              pc_create_and_seal(client_, id, bytes.data(), bytes.size(), nullptr, 0));
        check("flush", pc_flush(client_));
    }

    std::string get(const uint8_t (&id)[PC_ID_SIZE]) {
        pc_object object;
        check("get", pc_get(client_, id, 5.0, &object));
        std::string bytes(reinterpret_cast<const char *>(object.data), object.data_size);
        check("release", pc_release(client_, &object));
        return bytes;
    }

  private:
    std::string message(const char *what, int status) const {
        return std::string(what) + ": " + pc_status_name(status) + ": " +
               pc_error_message(client_);
    }
    void check(const char *what, int status) {
        if (status != PC_OK)
            throw std::runtime_error(message(what, status));
    }
    pc_client *client_ = nullptr;
};

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    try {
        Client client(argv[1]);
        uint8_t id[PC_ID_SIZE] = {'c', '+', '+'};
        client.put(id, "from C++");
        std::printf("%s\n", client.get(id) == "from C++" ? "ok" : "different bytes");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
