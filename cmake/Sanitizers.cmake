if(MP_SANITIZE)
  add_compile_options(-fsanitize=${MP_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${MP_SANITIZE})
endif()
